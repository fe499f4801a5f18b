"""Header names of the wire protocol and the hop-by-hop headers a proxy must not pass on."""

from __future__ import annotations

__all__ = [
    "FORWARDED_BY",
    "FORWARDED_VIA",
    "HOP_BY_HOP",
    "NODE",
    "STALE",
    "TXID",
]

TXID = b"forwarder-txid"
NODE = b"forwarder-node"
FORWARDED_VIA = b"forwarder-forwarded"  # on responses: proxy | replay | rpc
FORWARDED_BY = b"forwarder-forwarded-by"  # on forwarded requests: id of the node that forwarded
STALE = b"forwarder-stale"

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
