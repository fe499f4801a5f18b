"""Region affinity and latency: which nodes a request may go to, in which order, and how far away they are.

Pure functions, no I/O. A new request's nodes come from the client's routing headers
(`first_choice`), or for a browser from a `?_region=` query or `fly-region` cookie
(`browser_regions`, `region_cookie`); a replay's from its instruction (`replay_choice`,
`fallback_choice`). `parse_latency` reads the simulated distance of each region.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from .replay import REGION_CODE, Fallback, ReplayInstruction, parse_duration

__all__ = [
    "REGION_ALIASES",
    "Choice",
    "EdgeNode",
    "browser_regions",
    "fallback_choice",
    "first_choice",
    "nodes_in_regions",
    "parse_latency",
    "parse_region_list",
    "query_region",
    "region_cookie",
    "replay_choice",
]

# Fly's geographic aliases for `region` (plus `any`). Only the region codes Fly has had are listed;
# a node in a region missing here is still reachable by its own code.
_US = frozenset({"atl", "bos", "den", "dfw", "ewr", "iad", "lax", "mia", "ord", "phx", "sea", "sjc"})
REGION_ALIASES: dict[str, frozenset[str]] = {
    "us": _US,
    "usa": _US,
    "na": _US | {"yul", "yyz", "qro"},
    "sa": frozenset({"bog", "eze", "gdl", "gig", "gru", "scl"}),
    "eu": frozenset({"ams", "arn", "cdg", "fra", "lhr", "mad", "otp", "waw"}),
    "apac": frozenset({"bom", "hkg", "jnb", "nrt", "sin", "syd"}),
}
"""Region aliases a `region` list may use; `any` matches every node."""


@dataclass(frozen=True)
class EdgeNode:
    """One node behind the edge: its machine `id`, its `region` code and the base `url` it serves on."""

    id: str
    region: str
    url: str


def parse_latency(items: Iterable[str]) -> dict[str, float]:
    """Turn CLI items such as `["ams=80ms", "syd=0.2s"]` into `{"ams": 0.08, "syd": 0.2}` (seconds).

    A bare number is seconds. Raises ValueError naming the first bad item.
    """
    latency: dict[str, float] = {}
    for item in items:
        region, sep, amount = item.partition("=")
        region = region.strip().lower()
        try:
            if not sep or not REGION_CODE.match(region):
                raise ValueError("no region")
            text = amount.strip()
            seconds = float(text) if re.fullmatch(r"\d+(?:\.\d+)?", text) else parse_duration(text)
        except ValueError:
            raise ValueError(f"latency {item!r} is not REGION=DURATION; write it like ams=80ms or syd=0.2s") from None
        latency[region] = seconds
    return latency


def parse_region_list(text: str) -> tuple[str, ...]:
    """Regions of a client header such as `fly-prefer-region: iad,ord,us` (unquoted), lowercased."""
    return tuple(region.strip().lower() for region in text.strip().strip('"').split(",") if region.strip())


@dataclass(frozen=True)
class Choice:
    """Nodes to try in order (the first that accepts a connection gets the request).

    `preferred` is the instance asked for with `prefer_instance` / `fly-prefer-instance-id`: any
    other node that gets the request is told so with `fly-preferred-instance-unavailable`.
    """

    nodes: tuple[EdgeNode, ...]
    preferred: str | None = None

    def extra_headers(self, node: EdgeNode) -> list[tuple[str, str]]:
        """Request headers to add when `node` gets the request."""
        if self.preferred is not None and node.id != self.preferred:
            return [("fly-preferred-instance-unavailable", self.preferred)]
        return []


def nodes_in_regions(nodes: Sequence[EdgeNode], regions: Sequence[str]) -> list[EdgeNode]:
    """The nodes of `regions` in order of preference (region codes, aliases or `any`), each once."""
    chosen: list[EdgeNode] = []
    for region in regions:
        members = REGION_ALIASES.get(region)
        for node in nodes:
            matches = region == "any" or node.region == region or (members is not None and node.region in members)
            if matches and node not in chosen:
                chosen.append(node)
    return chosen


def first_choice(
    nodes: Sequence[EdgeNode],
    *,
    force_instance: str | None = None,
    prefer_instance: str | None = None,
    force_regions: Sequence[str] = (),
    prefer_regions: Sequence[str] = (),
) -> Choice:
    """Nodes for a new request, from the client's routing headers; `nodes` is in round-robin order.

    Forced choices have no fallback (an empty `Choice` means: answer 503). Otherwise a node that
    refuses the connection is replaced by another of its region, then by any node.
    """
    by_id = {node.id: node for node in nodes}
    if force_instance is not None:
        return Choice(tuple(n for n in (by_id.get(force_instance),) if n is not None))
    if prefer_instance is not None:
        first = [by_id[prefer_instance]] if prefer_instance in by_id else []
        return Choice(_failover(first, nodes), preferred=prefer_instance)
    if force_regions:
        return Choice(_failover(nodes_in_regions(nodes, force_regions), ()))
    if prefer_regions:
        return Choice(_failover(nodes_in_regions(nodes, prefer_regions), nodes))
    return Choice(_failover(list(nodes[:1]), nodes))


def replay_choice(nodes: Sequence[EdgeNode], instruction: ReplayInstruction, source: EdgeNode) -> Choice:
    """Nodes a replay from `source` may go to, best first; empty when nothing matches (`no_candidate`)."""
    pool = [node for node in nodes if not (instruction.elsewhere and node.id == source.id)]
    if instruction.instance is not None:
        return Choice(tuple(node for node in pool if node.id == instruction.instance))
    matching = nodes_in_regions(pool, instruction.regions) if instruction.regions else pool
    if instruction.prefer_instance is None:
        return Choice(tuple(matching))
    preferred = [node for node in pool if node.id == instruction.prefer_instance]
    rest = [node for node in matching if node not in preferred]
    return Choice(tuple(preferred + rest), preferred=instruction.prefer_instance)


def fallback_choice(nodes: Sequence[EdgeNode], fallback: Fallback, source: EdgeNode) -> Choice:
    """Where a replay that found no target goes back to: the issuing node (`prefer_self`: else any)."""
    if fallback == "force_self":
        return Choice((source,))
    return Choice(_failover([source], nodes))


def _failover(first: Sequence[EdgeNode], others: Sequence[EdgeNode]) -> tuple[EdgeNode, ...]:
    """`first`, then other nodes of the first node's region, then the rest of `others` in order."""
    ordered = list(first)
    if ordered:
        region = ordered[0].region
        ordered += [node for node in others if node.region == region and node not in ordered]
    ordered += [node for node in others if node not in ordered]
    return tuple(ordered)


def browser_regions(query: bytes, headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, ...]:
    """Regions from `?_region=` or else a `fly-region` cookie (browsers cannot set routing headers on links).

    The query wins, so a link switches region; the edge then sets the cookie (`region_cookie`), so
    the page's own requests (scripts, its websocket) stay in that region too.
    """
    region = query_region(query)
    if region:
        return parse_region_list(region)
    for name, value in headers:
        if name.lower() == b"cookie":
            for pair in value.decode("latin-1").split(";"):
                key, _, text = pair.strip().partition("=")
                if key == "fly-region" and text:
                    return parse_region_list(text)
    return ()


def query_region(query: bytes) -> str | None:
    """The `_region` parameter of a query string, if any."""
    for key, text in parse_qsl(query.decode("latin-1")):
        if key == "_region" and text:
            return text
    return None


def region_cookie(target: str) -> bytes | None:
    """The `Set-Cookie` value that keeps a browser in the region its link asked for, if it asked."""
    region = query_region(target.partition("?")[2].encode("latin-1"))
    if region and all(c.isalnum() or c in ",-" for c in region):  # nothing that could break the cookie
        return f"fly-region={region}; Path=/; SameSite=Lax".encode()
    return None
