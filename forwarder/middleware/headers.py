"""Header names of the wire protocol and the hop-by-hop headers a proxy must not pass on."""

from __future__ import annotations

import operator

__all__ = [
    "FORWARDED_BY",
    "FORWARDED_VIA",
    "HOP_BY_HOP",
    "NAME",
    "NODE",
    "REASON",
    "STALE",
    "TXID",
    "WRITE_REASONS",
]

NAME = operator.itemgetter(0)
"""The name of a `(name, value)` header pair: `map(NAME, headers)` takes a request's names in C."""

TXID = b"forwarder-txid"
NODE = b"forwarder-node"
FORWARDED_VIA = b"forwarder-forwarded"  # on responses: proxy | replay | rpc
FORWARDED_BY = b"forwarder-forwarded-by"  # on forwarded requests: id of the node that forwarded
STALE = b"forwarder-stale"
REASON = b"forwarder-reason"  # on forwarded requests: why the replica sent it (method, readonly, lag, ...)

WRITE_REASONS = frozenset({"method", "always_forward", "readonly", "endpoint", "restoring", "modified"})
"""Reasons (`forwarder-reason`, or `state=` of our fly-replay) that make a request a write on the
primary whatever its method: it gets `Forwarder-Txid`, the cookie, and the replica's wait.
`restoring` and `modified` are requests a replica cannot serve from its own copy (not restored
yet, or written by the app); they may write, so they are treated as writes too. The one other
reason, `lag`, is a read the replica could not serve in time."""

# RFC 9110 section 7.6.1, plus the pseudo-standard keep-alive and proxy-connection.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
