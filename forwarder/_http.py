"""The one way forwarder builds HTTP clients for traffic between nodes."""

from __future__ import annotations

import http.cookiejar
from typing import Any

import httpx


def node_client(**options: Any) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` for node-to-node traffic, shared by every user's requests.

    It keeps no cookies: a `Set-Cookie` meant for one user must never ride along on the next
    user's request through the same pool. It ignores HTTP_PROXY and friends, which are meant for
    the app's outbound traffic, not for the private network between nodes.
    """
    refuse_all = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(cookies=refuse_all, trust_env=False, **options)
