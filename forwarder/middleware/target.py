"""The one target rule: what a request may name, and the only URL it is ever sent to.

A request's target must be origin-form (`/path?query`, RFC 9112 section 3.2.1) with one leading
slash and no dot segments. Absolute-form (`http://host/...`), authority-form (`host:port`),
asterisk-form, `//host/...` and `@host...` are refused before anything is classified or
forwarded. Whatever is forwarded goes to the primary's configured base URL, with the path the
classification saw percent-encoded again, so the primary's server decodes exactly that path.
"""

from __future__ import annotations

import urllib.parse

from starlette.types import Scope

__all__ = ["target_problem", "upstream_target", "upstream_url"]

# Characters kept as they are when the classified path is encoded again (RFC 3986 pchar + "/").
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_QUERY_KEEP = frozenset(range(0x21, 0x7F)) - {ord("#")}


def target_problem(scope: Scope) -> str | None:
    """Why this request's target is refused (a 400 message), or None when it is origin-form."""
    raw = scope.get("raw_path")
    path = scope.get("path")
    if not isinstance(path, str):
        return "the request has no path"
    if isinstance(raw, bytes | bytearray) and raw:
        if not raw.startswith(b"/"):
            form = "an absolute-form" if b"://" in raw else "an authority-form or malformed"
            return f"{form} request target is not served: send the path only (origin-form, starting with one '/')"
        if raw.startswith(b"//"):
            return "a request target starting with '//' is not served: send the path with a single leading '/'"
    if not path.startswith("/") or path.startswith("//"):
        return "the decoded request path must start with a single '/'"
    if "/." in path:  # the only way to a '.' or '..' segment; most paths have none, and no split
        segments = path.split("/")
        if "." in segments or ".." in segments:
            return "a request path with '.' or '..' segments is not served: send the normalised path"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "the request path is not valid UTF-8"
    return None


def upstream_target(scope: Scope) -> str:
    """The origin-form target sent to the primary: the classified path, encoded again, + query."""
    path = urllib.parse.quote(scope["path"], safe=_PATH_SAFE)
    query: bytes = scope.get("query_string", b"")
    if not query:
        return path
    encoded = "".join(chr(b) if b in _QUERY_KEEP else f"%{b:02X}" for b in query)
    return f"{path}?{encoded}"


def upstream_url(base_url: str, scope: Scope, *, websocket: bool = False) -> str:
    """The primary's configured base URL plus `upstream_target(scope)`; nothing else from the request.

    Raises ValueError for a target the rule refuses (the middleware answered 400 before this).
    """
    problem = target_problem(scope)
    if problem is not None:
        raise ValueError(problem)
    base = base_url.rstrip("/")
    if websocket and base.startswith("http"):
        base = "ws" + base[len("http") :]
    return base + upstream_target(scope)
