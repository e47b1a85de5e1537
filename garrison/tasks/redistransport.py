"""kombu's Redis transport, with a channel that closes cleanly when the broker is lost.

When Redis goes away mid-run, Celery 5.7.0's consumer (``Consumer.on_connection_error_after_connected``)
calls ``connection.collect()`` and then ``connection.close()``. kombu 5.7.0's ``redis.Channel.close`` first
reads the reply of a BRPOP still pending on the channel (``_in_poll``, added by celery/kombu#1733); on a dead
connection that raises ``ConnectionError`` before the channel is marked closed, and ``collect()`` swallows
it, then detaches the transport from its connection (``transport.client = None``). ``close()`` closes the
same default channel again; this time it gets to restoring the unacked messages, which builds a new Redis
pool from ``self.connection.client.hostname``: ``AttributeError: 'NoneType' object has no attribute
'hostname'``. That is no connection error, so the worker logs "Unrecoverable error" and exits for good.

Here:

* ``close()`` takes a connection error while reading the pending BRPOP reply for what it is (the reply is
  gone with the connection) and goes on closing, so the channel is closed, and its unacked messages
  restored, or left in Redis's unacked index for ``restore_visible``, while the transport has its client;
* a channel whose transport was closed raises ``redis.exceptions.ConnectionError`` where it would build a
  new pool, so any late use is a connection error, which Celery and kombu recover from.

``garrison.tasks.app`` maps ``redis://`` and ``rediss://`` to this transport; nothing else changes.
"""

from __future__ import annotations

from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    def close(self) -> None:
        if self._in_poll:
            try:
                self._brpop_read()  # type: ignore[no-untyped-call]  # leaves _in_poll unset however it ends
            except Empty:
                pass
            except self.connection_errors:
                pass  # the connection is gone, and the pending reply with it
        super().close()  # type: ignore[no-untyped-call]

    def _connparams(self, asynchronous: bool = False) -> Any:
        transport = self.connection
        if transport is None or transport.client is None:
            from redis.exceptions import ConnectionError as RedisConnectionError

            raise RedisConnectionError("the kombu Redis transport is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


def install() -> None:
    """Make ``redis://`` and ``rediss://`` URLs use this transport (kombu resolves the scheme through this table)."""
    from kombu.transport import TRANSPORT_ALIASES

    TRANSPORT_ALIASES["redis"] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["rediss"] = f"{__name__}:Transport"
