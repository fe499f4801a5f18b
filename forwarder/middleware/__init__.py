"""The pure-ASGI middleware (lives here, not in a top-level `middleware`, to never collide with an app's)."""

from __future__ import annotations

from .core import ForwarderMiddleware

__all__ = ["ForwarderMiddleware"]
