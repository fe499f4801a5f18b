"""The edge: an emulator of the Fly proxy that sits in front of a local cluster, on one port.

```python
edge = Edge(
    [EdgeNode("n1", "fra", "http://127.0.0.1:8001"), EdgeNode("n2", "ams", "http://127.0.0.1:8002")],
    latency=parse_latency(["ams=80ms"]),
)
async with serve_edge(edge, "127.0.0.1", 8080) as url:  # or uvicorn.run(edge, port=8080)
    ...
```

Which node gets a new request (Fly's client routing headers):

1. `fly-force-instance-id: <id>`: that node, else 503 (unknown or down).
2. `fly-prefer-instance-id: <id>`: that node, else any (the node is told with `fly-preferred-instance-unavailable`).
3. `fly-force-region: ams,fra`: nodes of those regions in order, else 503.
4. `fly-prefer-region: ams,fra`, then for browsers, which cannot set headers on a link, a
   `fly-region=<r>` cookie or a `?_region=<r>` query parameter: nodes of those regions first,
   then any node.
5. Otherwise round robin over all nodes.

A node that refuses the connection is down: the next node of the same region, then any node,
gets the request (forced choices excepted). The request goes out with `Fly-Client-IP`, `Fly-Region`
(the region of the first node chosen, standing for the edge that took the connection),
`X-Forwarded-For/Proto/Port/SSL` and `Via: 2 fly.io`. A response carrying `fly-replay` (or a
`application/vnd.fly.replay+json` body) is dropped and the original request is sent again where it
says, with `fly-replay-src` (see `forwarder.dev.edge.replay` for the fields), up to `max_replays` times.
Bodies up to `max_replay_body` bytes are buffered so they can be replayed; larger ones are streamed
to the first node and cannot be replayed (PA01). Websockets are relayed both ways, and a node may
answer the upgrade with a non-101 `fly-replay` response to send it elsewhere. Every response gets
`fly-request-id`, `x-edge-node` (the node that answered) and `x-edge-replays`.

The package, one concern a module: `app` (the `Edge` ASGI app and `serve_edge`), `routing` (which
node takes a request, and following replays), `http` and `websocket` (the two paths to a node),
`request` (what the edge adds to a request and its answer), `replay` (the `fly-replay` protocol),
`regions` (region affinity and latency).
"""

from __future__ import annotations

from .app import Edge, serve_edge
from .regions import EdgeNode, parse_latency
from .replay import parse_duration

__all__ = ["Edge", "EdgeNode", "parse_duration", "parse_latency", "serve_edge"]
