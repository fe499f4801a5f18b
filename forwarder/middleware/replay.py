"""Replay mode: answer a write with `fly-replay` so the Fly proxy re-delivers it to the primary."""

from __future__ import annotations

from starlette.types import Scope

from ..policy import REPLAY_BODY_LIMIT, RoutingPolicy
from ..topology import Topology
from . import headers as h

__all__ = ["came_through_fly_proxy", "our_replay", "replay_headers", "replay_state", "replayable_size"]


def came_through_fly_proxy(scope: Scope) -> bool:
    """The Fly proxy (and the local edge) add `Fly-Client-IP` to every request it delivers."""
    return any(k == b"fly-client-ip" for k, _ in scope["headers"])


def replayable_size(scope: Scope, buffered: bytes | None = None) -> bool:
    """True when the body is known to be small enough for Fly to replay (under 1 MB)."""
    if buffered is not None:
        return len(buffered) < REPLAY_BODY_LIMIT
    length: bytes | None = None
    for key, value in scope["headers"]:
        if key == b"transfer-encoding":
            return False  # chunked: size unknown until read
        if key == b"content-length":
            length = value
    if length is None:
        return True  # no body
    try:
        return int(length) < REPLAY_BODY_LIMIT
    except ValueError:
        return False


def replay_headers(topology: Topology, policy: RoutingPolicy, state: str) -> list[tuple[bytes, bytes]] | None:
    """The `fly-replay` header naming the primary, or None when the primary is unknown."""
    target = topology.replay_target()
    if target is None:
        return None
    fields = [target, f"state={state}"]
    if policy.replay_timeout:
        fields.append(f"timeout={policy.replay_timeout}")
    if policy.replay_fallback:
        fields.append(f"fallback={policy.replay_fallback}")
    return [(b"fly-replay", ";".join(fields).encode())]


# Values of `state=` in our fly-replay headers: a replayed request carrying one of them in
# `fly-replay-src` has already made its hop.
_OUR_STATES = h.WRITE_REASONS | {"lag"}


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
