"""Headers one node sends another (`forwarder-*`), signed with the cluster secret.

A replica that forwards a request adds its own `forwarder-*` request headers (forwarded-by, the
reason, anything added later) and signs all of them with `Forwarder-Node-Signature: t=<unix
seconds>,v1=<hex HMAC-SHA256>`, over the timestamp, the method, the decoded path and every
`forwarder-*` header (name and value, sorted). Every node checks that signature on arrival and
drops the `forwarder-*` headers of a request that does not carry a valid, fresh one: a client
cannot claim to be a node. Two client headers survive: `forwarder-txid` (a read-your-writes token,
client-controlled like the cookie) and `forwarder-signature` (RPC's own signature, checked there).

Also here: the end-to-end filter of RFC 9110 section 7.6.1 (hop-by-hop headers and any header
named in `Connection` are not passed on) and the `X-Forwarded-For` append rule.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable

from .middleware.headers import HOP_BY_HOP

__all__ = ["NODE_SIGNATURE", "PREFIX", "end_to_end", "sign_node_headers", "verified_headers", "with_forwarded_for"]

NODE_SIGNATURE = b"forwarder-node-signature"
PREFIX = b"forwarder-"
"""What the name of every header one node sends another starts with (lowercase)."""
# Client headers with our prefix that are not claims by a node (see the module docstring).
CLIENT_HEADERS = frozenset({b"forwarder-txid", b"forwarder-signature"})

_FORMAT = re.compile(rb"t=([0-9]{1,12}),v1=([0-9a-f]{64})")

Headers = list[tuple[bytes, bytes]]


def _mac(secret: bytes, timestamp: bytes, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    lines = [timestamp, method.upper().encode("latin-1", "replace"), path.encode("utf-8", "surrogatepass")]
    lines += [name + b":" + value for name, value in sorted(headers)]
    return hmac.new(secret, b"\n".join(lines), hashlib.sha256).hexdigest().encode()


def _covered(headers: Headers) -> Headers:
    return [(k.lower(), v) for k, v in headers if k.lower().startswith(PREFIX) and k.lower() != NODE_SIGNATURE]


def sign_node_headers(secret: bytes, method: str, path: str, headers: Headers, *, now: float | None = None) -> Headers:
    """`headers` with every `forwarder-*` one signed (any earlier signature replaced).

    `path` is the decoded path the receiving node will see (the one this node classified).
    """
    out = [(k, v) for k, v in headers if k.lower() != NODE_SIGNATURE]
    timestamp = str(int(time.time() if now is None else now)).encode()
    mac = _mac(secret, timestamp, method, path, _covered(out))
    out.append((NODE_SIGNATURE, b"t=" + timestamp + b",v1=" + mac))
    return out


def verified_headers(
    secret: bytes | None, method: str, path: str, headers: Headers, *, max_age: float, now: float | None = None
) -> tuple[Headers, list[bytes]]:
    """`headers` without the node headers a node did not sign, and the names dropped (for logs).

    Unchanged (the same list) when nothing needs dropping: the hot path costs one pass.
    """
    claims = False
    signature: bytes | None = None
    for name, value in headers:
        key = name.lower()
        if key.startswith(PREFIX):
            if key == NODE_SIGNATURE:
                signature = value
            elif key not in CLIENT_HEADERS:
                claims = True
    if signature is None and not claims:
        return headers, []
    if signature is not None and secret and _valid(secret, signature, method, path, headers, max_age, now):
        return headers, []
    kept = [(k, v) for k, v in headers if not k.lower().startswith(PREFIX) or k.lower() in CLIENT_HEADERS]
    return kept, [k for k, _ in headers if k.lower().startswith(PREFIX) and k.lower() not in CLIENT_HEADERS]


def _valid(
    secret: bytes, signature: bytes, method: str, path: str, headers: Headers, max_age: float, now: float | None
) -> bool:
    match = _FORMAT.fullmatch(signature.strip())
    if match is None:
        return False
    timestamp, mac = match.groups()
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > max_age:
        return False
    return hmac.compare_digest(_mac(secret, timestamp, method, path, _covered(headers)), mac)


def end_to_end(headers: Headers, *, also: frozenset[bytes] = frozenset()) -> Headers:
    """The end-to-end headers: no hop-by-hop header, none named in `Connection`, none in `also`."""
    named = {
        token.strip().lower()
        for key, value in headers
        if key.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    }
    drop = HOP_BY_HOP | named | also
    return [(k, v) for k, v in headers if k.lower() not in drop]


def with_forwarded_for(headers: Headers, client_ip: str | None) -> Headers:
    """`X-Forwarded-For` with this hop's client appended (earlier values kept first, never trusted)."""
    if not client_ip:
        return headers
    earlier = [v for k, v in headers if k.lower() == b"x-forwarded-for"]
    out = [(k, v) for k, v in headers if k.lower() != b"x-forwarded-for"]
    out.append((b"x-forwarded-for", b", ".join([*earlier, client_ip.encode("latin-1", "replace")])))
    return out


# -- fly-replay state ----------------------------------------------------------------------------
# A replica's `fly-replay: ...;state=<reason>` comes back, copied by the Fly proxy, in the replayed
# request's `fly-replay-src`, where it marks the hop (loop guard, no read-your-writes wait). A client
# can send `fly-replay-src` too, so the state is sealed: `<reason>.<unix seconds>.<32 hex MAC>`
# over the reason, the time, the method and the path. On arrival a sealed state that checks out is
# opened back to `state=<reason>`, and any other state field is removed.

_SEALED = re.compile(rb"([a-z_]{1,32})\.([0-9]{1,12})\.([0-9a-f]{32})")
_STATE_FIELD = re.compile(rb"(^|[;,]\s*)state=([^;,]*)")


def _state_mac(secret: bytes, reason: bytes, timestamp: bytes, method: str, path: str) -> bytes:
    message = b"\n".join([b"fly-replay-state", reason, timestamp, method.upper().encode("latin-1", "replace")])
    message += b"\n" + path.encode("utf-8", "surrogatepass")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32].encode()


def seal_replay(secret: bytes, value: bytes, method: str, path: str, *, now: float | None = None) -> bytes:
    """A `fly-replay` header value with its `state=<reason>` sealed for this request."""

    def seal(match: re.Match[bytes]) -> bytes:
        reason = match.group(2)
        timestamp = str(int(time.time() if now is None else now)).encode()
        sealed = reason + b"." + timestamp + b"." + _state_mac(secret, reason, timestamp, method, path)
        return match.group(1) + b"state=" + sealed

    return _STATE_FIELD.sub(seal, value, count=1)


def opened_replay_source(
    secret: bytes | None, value: bytes, method: str, path: str, *, max_age: float, now: float | None = None
) -> bytes:
    """A `fly-replay-src` value with a valid sealed state opened to `state=<reason>`, any other
    state removed (it cannot have come from one of our nodes)."""

    def open_(match: re.Match[bytes]) -> bytes:
        sealed = _SEALED.fullmatch(match.group(2).strip())
        if sealed is not None and secret:
            reason, timestamp, mac = sealed.groups()
            fresh = abs((time.time() if now is None else now) - int(timestamp)) <= max_age
            if fresh and hmac.compare_digest(_state_mac(secret, reason, timestamp, method, path), mac):
                return match.group(1) + b"state=" + reason
        return b""

    return _STATE_FIELD.sub(open_, value).strip(b";, ")
