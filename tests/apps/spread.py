"""``counter``'s twin whose effects run in parallel (``effects="parallel"``): a failing listener of one
version does not hold the next ones back."""

from __future__ import annotations

from garrison import Machine
from tests.apps.counter import add, record

spread = Machine("spread", preferences={"step": 1}, effects="parallel")
spread.reducer(add)
spread.listener(record)
