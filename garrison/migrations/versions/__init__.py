"""One module per revision, ``NNNN_slug.py``, numbered in order. alembic skips this file.

A package, so that an installed garrison ships its migrations with its modules.
"""
