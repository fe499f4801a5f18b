"""One helper for logging values that came from a request: control characters are escaped."""

from __future__ import annotations

__all__ = ["clean"]

_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPES.update({ord("\\"): "\\\\", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def clean(value: object, limit: int = 300) -> str:
    """`value` as one log-safe line: C0/C1 controls, DEL, backslash and line separators escaped,
    bytes decoded as latin-1, and cut to `limit` characters (a request path can be long)."""
    text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.translate(_ESCAPES)
