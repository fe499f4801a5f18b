"""How a request that already made a hop is recognised: our forwarded-by and reason headers, and
the `state=` of our (sealed, then opened) fly-replay states. Node headers reach here verified."""

from __future__ import annotations

from starlette.types import Scope

from ..txid import Txid
from . import headers as h

__all__ = ["already_hopped", "forwarded_as_write", "header", "later", "our_replay", "replay_state"]

# Values of `state=` in our fly-replay headers: a replayed request carrying one of them in
# `fly-replay-src` has already made its hop. `lag` and `unavailable` are reads (no txid).
_OUR_STATES = h.WRITE_REASONS | {"lag", "unavailable"}


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header `name` (lower-case bytes), or None."""
    return next((value for key, value in scope["headers"] if key == name), None)


def already_hopped(scope: Scope) -> bool:
    """Whether this request was already forwarded or replayed by a forwarder node."""
    if header(scope, h.FORWARDED_BY) is not None:
        return True
    source = header(scope, b"fly-replay-src")
    return source is not None and our_replay(source)


def our_replay(source: bytes) -> bool:
    """Whether a `fly-replay-src` value names a replay made by a forwarder node (by its `state`)."""
    return replay_state(source) in _OUR_STATES


def replay_state(source: bytes) -> str | None:
    """The `state=` field of a `fly-replay-src` value, if any."""
    for field in source.decode("latin-1").replace(",", ";").split(";"):
        key, _, value = field.strip().partition("=")
        if key.strip() == "state":
            return value.strip()
    return None


def forwarded_as_write(scope: Scope) -> bool:
    """Whether a replica forwarded (or replayed) this request because it must run as a write."""
    for key, value in scope["headers"]:
        if key == h.REASON:
            return value.decode("latin-1").strip() in h.WRITE_REASONS
        if key == b"fly-replay-src":
            return replay_state(value) in h.WRITE_REASONS
    return False


def later(a: Txid | None, b: Txid | None) -> Txid | None:
    """The later of two optional txids."""
    return b if a is None else a if b is None or a >= b else b
