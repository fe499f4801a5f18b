"""ASGI entry point of the bookshop site, as Django's `startproject` writes it, with forwarder's function."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookshop.settings")

from forwarder.django import get_asgi_application

application = get_asgi_application()
