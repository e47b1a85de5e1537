"""HTTP ingest: a small FastAPI app so services not written in Python can send events.

FastAPI and uvicorn are an optional extra (``pip install 'garrison[http]'``); nothing here imports them
until an app is built, so the rest of garrison works without them. ``garrison serve`` runs the app; so does
any ASGI server with the factory: ``uvicorn --factory garrison.http:create_app``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from garrison.errors import ConfigurationError
from garrison.http.keys import ApiKeys

if TYPE_CHECKING:
    from types import ModuleType

    from fastapi import FastAPI

    from garrison.client import Garrison
    from garrison.config import Settings

__all__ = ["ApiKeys", "create_app", "require"]


def require(module: str) -> ModuleType:
    """Import a module of the ``http`` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"HTTP ingest needs {module}, which is not installed: pip install 'garrison[http]'",
            missing=module,
        ) from exc


def create_app(client: Garrison | None = None, *, settings: Settings | None = None) -> FastAPI:
    """The HTTP ingest app for ``client`` (or for a client built from ``settings``, or from the
    environment when neither is given: that is what ``uvicorn --factory`` calls)."""
    require("fastapi")
    from garrison.http.app import build_app

    if client is not None:
        return build_app(client)
    from garrison.client import Garrison

    return build_app(Garrison(settings), own_client=True)
