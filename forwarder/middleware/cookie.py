"""The read-your-writes cookie: `__txid=<16 hex>` set by the primary, honoured by replicas."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Scope

from ..exceptions import InvalidTxid
from ..policy import CookiePolicy
from ..txid import Txid
from .headers import NAME, TXID

__all__ = ["clear_cookie", "read_cookie", "set_cookie", "txid_headers", "txid_in", "txid_token"]


def read_cookie(scope: Scope, policy: CookiePolicy) -> Txid | None:
    """The txid in the request's cookie, or None when absent or malformed (never an error page)."""
    return txid_in((header for key, header in scope["headers"] if key == b"cookie"), policy.name)


def txid_in(cookie_headers: Iterable[bytes], name: str = "__txid") -> Txid | None:
    """The txid in the cookie named `name` of these `Cookie` header values, or None."""
    wanted = name.encode() + b"="
    for header in cookie_headers:
        if header.find(wanted) < 0:  # the common case: no cookie of ours, no parsing (`find`: see `Glance`)
            continue
        for pair in header.split(b";"):
            pair = pair.strip()
            if pair.startswith(wanted):
                try:
                    return Txid.parse(pair[len(wanted) :].strip(b'"').decode("latin-1"))
                except InvalidTxid:
                    return None
    return None


def txid_token(value: bytes) -> Txid | None:
    """The txid of a `Forwarder-Txid` request header (the cookie's header form), or None if malformed."""
    try:
        return Txid.parse(value.strip().decode("latin-1"))
    except InvalidTxid:
        return None


def _is_https(scope: Scope) -> bool:
    if scope.get("scheme") in ("https", "wss"):
        return True
    headers = scope["headers"]
    # Asked on every write: the names are searched in C, and walked only when the header is there.
    if b"x-forwarded-proto" not in map(NAME, headers):
        return False
    return any(k == b"x-forwarded-proto" and v.split(b",")[0].strip() == b"https" for k, v in headers)


def _attributes(policy: CookiePolicy, scope: Scope, max_age: int) -> str:
    secure = policy.secure is True or policy.same_site == "none" or (policy.secure is None and _is_https(scope))
    # Built once per policy, age and Secure: every write on the primary sets the cookie, and building
    # the attributes cost it more than the rest of the header together.
    key = (id(policy), max_age, secure)
    built = _BUILT.get(key)
    if built is None or built[0] is not policy:
        if len(_BUILT) >= _MAX_BUILT:
            _BUILT.clear()
        parts = [f"Path={policy.path}", f"Max-Age={max_age}"]
        if policy.http_only:
            parts.append("HttpOnly")
        parts.append(f"SameSite={policy.same_site.capitalize()}")
        if secure:
            parts.append("Secure")
        built = _BUILT[key] = (policy, "; ".join(parts))
    return built[1]


_BUILT: dict[tuple[int, int, bool], tuple[CookiePolicy, str]] = {}  # the policy kept: its id is not reused
_MAX_BUILT = 64


def set_cookie(policy: CookiePolicy, scope: Scope, txid: Txid) -> str:
    """The `Set-Cookie` value recording a write's txid."""
    return _value(policy, txid, _attributes(policy, scope, policy.max_age))


def _value(policy: CookiePolicy, txid: Txid, attributes: str) -> str:
    return f"{policy.name}={txid}; {attributes}"


RawHeader = tuple[bytes, bytes]


def txid_headers(policy: CookiePolicy, scope: Scope, txid: Txid) -> tuple[RawHeader, RawHeader]:
    """A write's `Forwarder-Txid` and `Set-Cookie` headers, raw.

    The last pair made is kept and given again for the same txid and attributes: under load a run of
    writes shares one txid (one sync per monitor interval), and formatting both cost each write more
    than finding the txid's file did."""
    attributes = _attributes(policy, scope, policy.max_age)
    last = _last_pair
    if last is not None and last[0] == txid and last[1] is attributes:  # the attributes string is the policy's own
        return last[2]
    pair = ((TXID, str(txid).encode()), (b"set-cookie", _value(policy, txid, attributes).encode("latin-1")))
    _keep_pair((txid, attributes, pair))
    return pair


_last_pair: tuple[Txid, str, tuple[RawHeader, RawHeader]] | None = None


def _keep_pair(made: tuple[Txid, str, tuple[RawHeader, RawHeader]]) -> None:
    global _last_pair
    _last_pair = made


def clear_cookie(policy: CookiePolicy, scope: Scope) -> str:
    """The `Set-Cookie` value that removes the cookie (its txid is ahead of the primary)."""
    return f"{policy.name}=; {_attributes(policy, scope, 0)}"
