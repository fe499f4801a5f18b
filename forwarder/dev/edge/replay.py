"""The `fly-replay` protocol as the edge reads it: the header and JSON forms, parsed into a `ReplayInstruction`.

Pure functions, no I/O: `forwarder.dev.edge.regions` turns an instruction into target nodes and
`forwarder.dev.edge.routing` does the network part. The rules follow Fly's
documentation (shared/reference/fly-platform.md, section 1): a header value is `;`-separated
`key=value` fields, a comma-separated region list must be quoted, and the fields are `region`,
`instance`, `prefer_instance`, `app`, `state`, `elsewhere`, `timeout` and `fallback`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = [
    "REGION_CODE",
    "REPLAY_CONTENT_TYPE",
    "Fallback",
    "InvalidReplay",
    "ReplayInstruction",
    "Transform",
    "parse_duration",
    "parse_replay_header",
    "parse_replay_json",
]

REPLAY_CONTENT_TYPE = "application/vnd.fly.replay+json"

Fallback = Literal["force_self", "prefer_self"]

_FIELDS = ("region", "instance", "prefer_instance", "app", "state", "elsewhere", "timeout", "fallback")
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
REGION_CODE = re.compile(r"^[a-z][a-z0-9-]*$")
"""What a region code looks like (`fra`, `us`, `any`)."""
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}


class InvalidReplay(ValueError):
    """A `fly-replay` value Fly would reject (error PA03); the message names the bad field and the fix."""


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
        if not REGION_CODE.match(region):
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
