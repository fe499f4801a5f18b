"""Sort a request into internal, passthrough, read or write, from its method and path alone."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..policy import RoutingPolicy

__all__ = ["Kind", "Route", "classify"]

INTERNAL_PREFIX = "/_forwarder/"


class Kind(enum.Enum):
    INTERNAL = "internal"  # forwarder's own endpoints
    PASSTHROUGH = "passthrough"  # served where it lands, no forwarding, waiting or cookie
    READ = "read"  # served by the local replica
    WRITE = "write"  # must run on the primary


@dataclass(frozen=True)
class Route:
    kind: Kind
    reason: str  # why: "method", "always_forward", "passthrough", "internal"


INTERNAL = Route(Kind.INTERNAL, "internal")
PASSTHROUGH = Route(Kind.PASSTHROUGH, "passthrough")
ALWAYS_FORWARD = Route(Kind.WRITE, "always_forward")
READ = Route(Kind.READ, "method")
WRITE = Route(Kind.WRITE, "method")


def classify(method: str, path: str, policy: RoutingPolicy) -> Route:
    """Internal paths first, then passthrough, then always-forward globs, then the method."""
    if path.startswith(INTERNAL_PREFIX):
        return INTERNAL
    # Most apps set no path rules: an empty tuple is then all this costs.
    if policy.passthrough and policy.is_passthrough(path):
        return PASSTHROUGH
    if policy.always_forward and policy.is_always_forward(path):
        return ALWAYS_FORWARD
    if method in policy.read_methods or method.upper() in policy.read_methods:
        return READ
    return WRITE
