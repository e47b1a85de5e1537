"""Failures Flower can see: a ``garrison.process`` task whose messages a handler refused ends as FAILURE.

The engine records a failed message as a row (guarantee 7: the key and the fleet go on), so the task that
applied it would otherwise end as SUCCESS with the count hidden in its result, and Flower would report
*Failed 0* while handlers fail. :func:`raise_if_failed` ends such a task with :class:`MessagesFailed`
instead, after everything was committed: Flower shows the task as failed, counts a ``task-failed`` event,
and its exception names the failures to look at (``garrison inspect KEY --tenant T``, ``garrison retry ID``).

It is an *expected* exception of the task (Celery's ``throws``): the worker logs one line at INFO for it
rather than a traceback, since the line that matters, the handler's own exception, was logged already.
Nothing is redelivered: the task is acknowledged (``task_acks_on_failure_or_timeout``) and the failures
wait for ``garrison retry``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select

from garrison.core.runtime import Runtime
from garrison.models import FAILURES

__all__ = ["MessagesFailed", "raise_if_failed"]

# At most this many failures are named in the exception (Flower shows the text in its task list).
SHOWN = 5


class MessagesFailed(Exception):
    """Messages of this task failed in their handlers; they are recorded and retryable. The text names
    the failures (id, automation, key, message, error) and how to look at them."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __reduce__(self) -> tuple[type[MessagesFailed], tuple[str]]:
        return MessagesFailed, (self.text,)


def raise_if_failed(client: Runtime, tenant: str, keys: Sequence[str], counts: Mapping[str, int]) -> None:
    """Raise :class:`MessagesFailed` when ``counts["failed"]`` is not 0, naming the newest failures of
    ``keys``; do nothing otherwise."""
    failed = int(counts.get("failed", 0))
    if not failed:
        return
    with client.db.session() as s:
        rows = s.execute(
            select(FAILURES.c.id, FAILURES.c.automation, FAILURES.c.key, FAILURES.c.message,
                   FAILURES.c.error_type, FAILURES.c.error)
            .where(FAILURES.c.tenant == tenant, FAILURES.c.key.in_(list(keys)), FAILURES.c.status == "failed")
            .order_by(FAILURES.c.id.desc())
            .limit(min(failed, SHOWN))
        ).all()
    named = "; ".join(
        f"failure {r.id}: {r.automation} key={r.key} message {r.message!r}: {r.error_type}: {r.error}"
        for r in reversed(rows)
    )
    more = f" (and {failed - len(rows)} more)" if failed > len(rows) else ""
    raise MessagesFailed(
        f"{failed} of {counts.get('messages', failed)} messages failed, tenant={tenant}: {named}{more}. "
        f"See `garrison inspect KEY --tenant {tenant}`; `garrison retry ID --tenant {tenant}` applies one again."
    )
