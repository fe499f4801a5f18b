"""The `fly-replay` protocol as the edge reads it: parse the header or JSON form, then choose target nodes.

Pure functions, no I/O: `forwarder.dev.edge` does the network part. The rules follow Fly's
documentation (shared/reference/fly-platform.md, section 1): a header value is `;`-separated
`key=value` fields, a comma-separated region list must be quoted, and the fields are `region`,
`instance`, `prefer_instance`, `app`, `state`, `elsewhere`, `timeout` and `fallback`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = [
    "REGION_ALIASES",
    "REPLAY_CONTENT_TYPE",
    "Choice",
    "EdgeNode",
    "Fallback",
    "InvalidReplay",
    "ReplayInstruction",
    "Transform",
    "fallback_choice",
    "first_choice",
    "nodes_in_regions",
    "parse_duration",
    "parse_latency",
    "parse_region_list",
    "parse_replay_header",
    "parse_replay_json",
    "replay_choice",
]

REPLAY_CONTENT_TYPE = "application/vnd.fly.replay+json"

Fallback = Literal["force_self", "prefer_self"]

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

_FIELDS = ("region", "instance", "prefer_instance", "app", "state", "elsewhere", "timeout", "fallback")
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_REGION = re.compile(r"^[a-z][a-z0-9-]*$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}


class InvalidReplay(ValueError):
    """A `fly-replay` value Fly would reject (error PA03); the message names the bad field and the fix."""


@dataclass(frozen=True)
class EdgeNode:
    """One node behind the edge: its machine `id`, its `region` code and the base `url` it serves on."""

    id: str
    region: str
    url: str


@dataclass(frozen=True)
class Transform:
    """The JSON form's `transform`: a new path (with query) and headers to delete or set on the replay."""

    path: str | None = None
    delete_headers: tuple[str, ...] = ()
    set_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ReplayInstruction:
    """What a `fly-replay` answer asks the edge to do with the original request."""

    regions: tuple[str, ...] = ()
    instance: str | None = None
    prefer_instance: str | None = None
    app: str | None = None
    state: str | None = None
    elsewhere: bool = False
    timeout: float | None = None
    fallback: Fallback | None = None
    transform: Transform | None = None
    source: str = ""
    """The header value or JSON body it was parsed from, for error messages."""


def parse_replay_header(value: str) -> ReplayInstruction:
    """Parse a `fly-replay` header value such as `region="iad,ord";state=write`.

    Raises `InvalidReplay` for an unknown or repeated field, an empty or malformed value, an
    unquoted region list, or a value that names no target.
    """
    fields: dict[str, str] = {}
    for part in _split_fields(value):
        key, sep, raw = part.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise InvalidReplay(f"fly-replay {value!r}: field {part.strip()!r} is not key=value")
        if key not in _FIELDS:
            raise InvalidReplay(f"fly-replay {value!r}: unknown field {key!r}; known fields: {', '.join(_FIELDS)}")
        if key in fields:
            raise InvalidReplay(f"fly-replay {value!r}: field {key!r} appears twice")
        raw = raw.strip()
        quoted = len(raw) >= 2 and raw[0] == raw[-1] == '"'
        if key == "region" and "," in raw and not quoted:
            raise InvalidReplay(f'fly-replay {value!r}: a region list must be quoted, as in region="{raw}"')
        fields[key] = raw[1:-1] if quoted else raw
    return _instruction(fields, source=value)


def parse_replay_json(body: bytes) -> ReplayInstruction:
    """Parse the JSON form (`Content-Type: application/vnd.fly.replay+json`), including `transform`."""
    source = body.decode("utf-8", "replace")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidReplay(f"fly-replay JSON body {source[:200]!r} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidReplay(f"fly-replay JSON body {source[:200]!r} must be an object")
    unknown = set(data) - set(_FIELDS) - {"transform"}
    if unknown:
        raise InvalidReplay(f"fly-replay JSON body: unknown fields {sorted(unknown)}; known: {', '.join(_FIELDS)}")
    fields: dict[str, str] = {}
    for key, item in data.items():
        if key == "transform" or item is None:
            continue
        if key == "region" and isinstance(item, list):
            item = ",".join(str(region) for region in item)
        if isinstance(item, bool):
            item = "true" if item else "false"
        if not isinstance(item, str):
            raise InvalidReplay(f"fly-replay JSON body: field {key!r} must be a string, not {type(item).__name__}")
        fields[key] = item
    return replace(_instruction(fields, source=source), transform=_transform(data.get("transform")))


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `10s`, `800ms` or `1m`; raises ValueError naming the bad text."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"duration {text!r} is not a number followed by ms, s or m (for example 800ms or 10s)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_latency(items: Iterable[str]) -> dict[str, float]:
    """Turn CLI items such as `["ams=80ms", "syd=0.2s"]` into `{"ams": 0.08, "syd": 0.2}` (seconds).

    A bare number is seconds. Raises ValueError naming the first bad item.
    """
    latency: dict[str, float] = {}
    for item in items:
        region, sep, amount = item.partition("=")
        region = region.strip().lower()
        try:
            if not sep or not _REGION.match(region):
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


def _split_fields(value: str) -> list[str]:
    """Split on `;` outside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == ";" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise InvalidReplay(f"fly-replay {value!r}: a double quote is not closed")
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def _instruction(fields: dict[str, str], *, source: str) -> ReplayInstruction:
    for key, raw in fields.items():
        if not raw.strip():
            raise InvalidReplay(f"fly-replay {source!r}: field {key!r} is empty")
    regions = _regions(fields["region"], source) if "region" in fields else ()
    instance = _token(fields, "instance", source)
    prefer_instance = _token(fields, "prefer_instance", source)
    app = _token(fields, "app", source)
    elsewhere = _boolean(fields.get("elsewhere", "false"), source)
    if instance is not None and prefer_instance is not None:
        raise InvalidReplay(f"fly-replay {source!r}: give instance or prefer_instance, not both")
    if not (regions or instance or prefer_instance or app or elsewhere):
        raise InvalidReplay(
            f"fly-replay {source!r} names no target; add region=, instance=, prefer_instance=, app= or elsewhere=true"
        )
    timeout = None
    if "timeout" in fields:
        try:
            timeout = parse_duration(fields["timeout"])
        except ValueError as exc:
            raise InvalidReplay(f"fly-replay {source!r}: timeout: {exc}") from None
    fallback: Fallback | None = None
    if "fallback" in fields:
        if fields["fallback"] == "force_self":
            fallback = "force_self"
        elif fields["fallback"] == "prefer_self":
            fallback = "prefer_self"
        else:
            raise InvalidReplay(
                f"fly-replay {source!r}: fallback must be force_self or prefer_self, not {fields['fallback']!r}"
            )
    return ReplayInstruction(
        regions=regions,
        instance=instance,
        prefer_instance=prefer_instance,
        app=app,
        state=fields.get("state"),
        elsewhere=elsewhere,
        timeout=timeout,
        fallback=fallback,
        source=source,
    )


def _regions(raw: str, source: str) -> tuple[str, ...]:
    regions = tuple(region.strip().lower() for region in raw.split(","))
    for region in regions:
        if not _REGION.match(region):
            raise InvalidReplay(f"fly-replay {source!r}: {region!r} is not a region code, alias or 'any'")
    return regions


def _token(fields: dict[str, str], key: str, source: str) -> str | None:
    raw = fields.get(key)
    if raw is not None and not _TOKEN.match(raw):
        raise InvalidReplay(f"fly-replay {source!r}: {key} {raw!r} is not a machine or app name")
    return raw


def _boolean(raw: str, source: str) -> bool:
    if raw.lower() not in ("true", "false"):
        raise InvalidReplay(f"fly-replay {source!r}: elsewhere must be true or false, not {raw!r}")
    return raw.lower() == "true"


def _transform(data: Any) -> Transform | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise InvalidReplay("fly-replay JSON body: transform must be an object with path, delete_headers, set_headers")
    path = data.get("path")
    deletes = data.get("delete_headers", [])
    sets = data.get("set_headers", [])
    valid = (
        (path is None or (isinstance(path, str) and path.startswith("/")))
        and isinstance(deletes, list)
        and all(isinstance(name, str) for name in deletes)
        and isinstance(sets, list)
        and all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in sets)
        and all(isinstance(item.get("value"), str) for item in sets)
    )
    if not valid:
        raise InvalidReplay(
            'fly-replay JSON body: transform expects {"path": "/p?q", "delete_headers": ["name"], '
            '"set_headers": [{"name": "n", "value": "v"}]}'
        )
    return Transform(
        path=path,
        delete_headers=tuple(name.lower() for name in deletes),
        set_headers=tuple((item["name"], item["value"]) for item in sets),
    )
