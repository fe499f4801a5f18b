"""The demo app: a message board on forwarder. `example_app:app` is built from `FORWARDER_*` settings."""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    # Built on first access, so importing the package (tests, tools) reads no environment.
    if name == "app":
        from .main import create_app

        globals()["app"] = application = create_app()
        return application
    raise AttributeError(f"module 'example_app' has no attribute {name!r}")
