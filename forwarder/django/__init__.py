"""Django on a forwarder cluster: a database backend and the ASGI application.

```python
# settings.py
DATABASES = {"default": {"ENGINE": "forwarder.django", "NAME": os.environ["FORWARDER_DATABASE"]}}

# asgi.py
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from forwarder.django import get_asgi_application

application = get_asgi_application()
```

`ENGINE: "forwarder.django"` is Django's sqlite3 backend under forwarder's database-access rule
(`forwarder.django.base`): WAL and the pragmas on the primary; read-only connections on a
replica, never kept across requests; `manage.py migrate` refused on a replica.

`get_asgi_application()` is Django's, wrapped in `ForwarderMiddleware` (reads local, writes
forwarded to the primary, read-your-writes), with the two things Django's handler lacks on a
cluster: it answers the ASGI lifespan (which starts and stops the forwarder), and a view that
hits the read-only error on a replica is forwarded to the primary like any write instead of
answering 500 (writes discovered late).

This package imports Django: install it with `pip install 'forwarder[django]'`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from ..middleware import ForwarderMiddleware
    from ..runtime import Forwarder

__all__ = ["DjangoApp", "get_asgi_application"]

from .asgi import DjangoApp


def get_asgi_application(forwarder: Forwarder | None = None) -> ForwarderMiddleware:
    """Django's ASGI application for a forwarder node (`forwarder` defaults to `Forwarder.from_settings()`).

    Call it where Django's own `get_asgi_application()` is called (it sets Django up the same way).
    """
    from django.core.asgi import get_asgi_application as django_application

    from ..middleware import ForwarderMiddleware
    from ..runtime import Forwarder

    django: ASGIApp = django_application()
    from . import base  # noqa: F401  (connects the late-write receiver before the first request)

    return ForwarderMiddleware(DjangoApp(django), forwarder=forwarder or Forwarder.from_settings())
