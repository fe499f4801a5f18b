"""The demo app: a live message board on forwarder. `example_app:app` is built from `FORWARDER_*` settings.

`GET /` is rendered on the server; the page keeps a websocket to `/live` (see `example_app.live`)
over which it posts and receives a fresh render whenever this node's replica advances.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    # Built on first access, so importing the package (tests, tools) reads no environment.
    if name == "app":
        from forwarder import ConfigurationError

        from .main import create_app

        try:
            application = create_app()
        except ConfigurationError as exc:
            # `uvicorn example_app:app` imports this: SystemExit makes a bad setting one line on
            # stderr (and exit status 1) instead of a traceback through uvicorn's importer.
            raise SystemExit(f"example_app: {exc}") from None
        globals()["app"] = application
        return application
    raise AttributeError(f"module 'example_app' has no attribute {name!r}")
