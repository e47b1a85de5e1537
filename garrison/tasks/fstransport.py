"""kombu's filesystem transport, with messages that appear whole (the embedded default's broker).

kombu writes a message straight into its final ``<time>_<uuid>.<queue>.msg`` file and only then fills
it; a consumer listing the folder meanwhile moves the file away and reads it empty, and the worker dies
with "Unrecoverable error: JSONDecodeError" (celery/kombu#1551; the writer's lock is advisory and the
reader never takes it). Here a message is written under a name no consumer matches, in the same folder,
then renamed into place: ``os.replace`` is atomic, so a consumer sees the whole message or none of it.
An exchange's table file has the same race when it is first created; it is created whole as well.

``garrison.tasks.app`` maps ``filesystem://`` to this transport; nothing else changes.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):  # type: ignore[misc]
    def _queue_bind(self, exchange: Any, routing_key: Any, pattern: Any, queue: Any) -> None:
        # kombu creates an exchange's table file empty, then locks and fills it: a publisher reading it
        # in between fails to parse it. Create it whole instead (os.link: atomic, and only if absent).
        table = self._exchange_file(exchange)  # type: ignore[no-untyped-call]
        self.control_folder.mkdir(exist_ok=True)
        if not table.exists():
            entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
            partial = table.with_name(f".{uuid.uuid4().hex}.partial")
            partial.write_bytes(str_to_bytes(dumps([entry])))  # type: ignore[no-untyped-call]
            try:
                os.link(partial, table)
                return
            except FileExistsError:
                pass  # another process created it meanwhile: add to it below, under its lock
            finally:
                partial.unlink(missing_ok=True)
        super()._queue_bind(exchange, routing_key, pattern, queue)  # type: ignore[no-untyped-call]

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot and no ".<queue>.msg" suffix: kombu's _get skips it while it is written.
        partial = os.path.join(self.data_folder_out, f".{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))  # type: ignore[no-untyped-call]
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):  # type: ignore[misc]
    Channel = Channel


def install() -> None:
    """Make ``filesystem://`` URLs use this transport (kombu resolves the scheme through this table)."""
    from kombu.transport import TRANSPORT_ALIASES

    TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"
