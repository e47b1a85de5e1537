"""``python -m garrison.cli``: the same as the ``garrison`` command."""

from garrison.cli import main

main()
