"""The frames of the node channel: one binary websocket message each.

Every frame is `kind` (1 byte), `stream` (4 bytes, big-endian) and a payload:

| kind | from | payload |
|---|---|---|
| `REQUEST` | replica | 4-byte length, JSON `{"m": method, "t": target, "h": headers}`, then the whole body |
| `WHOLE` | primary | a whole response: 4-byte length, the `START` JSON, then the whole body |
| `START` | primary | JSON `{"s": status, "h": headers}` |
| `BODY` | primary | a chunk of the response body; more follows |
| `END` | primary | the last chunk (possibly empty) |
| `CREDIT` | replica | 4 bytes: how many more body bytes the primary may send on the stream |
| `CANCEL` | replica | none: the replica stopped waiting (its client left, or it timed out) |
| `RESET` | primary | none: the response broke off after it started |

Header names and values travel as latin-1 strings, which map every byte to one character, so
they arrive byte for byte as they were sent.
"""

from __future__ import annotations

import enum
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from ..exceptions import ChannelProtocolError

__all__ = [
    "MAX_CHUNK",
    "Frame",
    "Kind",
    "RequestHead",
    "ResponseHead",
    "decode",
    "decode_credit",
    "decode_request",
    "decode_start",
    "decode_whole",
    "encode",
    "encode_credit",
    "encode_request",
    "encode_start",
    "encode_whole",
]

MAX_CHUNK = 64 * 1024
"""Largest body chunk in one frame: a long response never holds the channel for long."""

_PREFIX = struct.Struct("!BI")
_LENGTH = struct.Struct("!I")

Headers = list[tuple[bytes, bytes]]

# What HTTP/1.1 itself allows (RFC 9110 section 5): a node must not pass on through the channel a
# header the primary's HTTP server would have refused.
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[^\r\n\x00]*")


class Kind(enum.IntEnum):
    REQUEST = 1
    START = 2
    BODY = 3
    END = 4
    CREDIT = 5
    CANCEL = 6
    RESET = 7
    WHOLE = 8


_KINDS = {kind.value: kind for kind in Kind}  # a dict lookup, not the enum's own (slower) call


@dataclass(frozen=True)
class Frame:
    kind: Kind
    stream: int
    payload: bytes = b""


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: bytes
    """The request target in origin form: the raw path, and `?` and the query when there is one."""
    headers: Headers


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: Headers


def encode(kind: Kind, stream: int, payload: bytes = b"") -> bytes:
    return _PREFIX.pack(kind, stream) + payload


def decode(message: bytes) -> Frame:
    """The frame in `message`; `ChannelProtocolError` for anything that is not one."""
    if len(message) < _PREFIX.size:
        raise ChannelProtocolError(f"a channel frame of {len(message)} bytes is shorter than its 5-byte prefix")
    kind, stream = _PREFIX.unpack_from(message)
    known = _KINDS.get(kind)
    if known is None:
        raise ChannelProtocolError(f"unknown channel frame kind {kind}")
    return Frame(known, stream, message[_PREFIX.size :])


def _strings(headers: Headers) -> list[list[str]]:
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]


def _headers(value: object, *, http_rules: bool) -> Headers:
    """The headers of a head; `http_rules` also refuses what HTTP/1.1 would (a request's: the replica
    forwards what a client sent; a response's pass the replica's own HTTP server on the way out)."""
    if not isinstance(value, list):
        raise ChannelProtocolError("channel frame headers are not a list of [name, value] strings")
    out: Headers = []
    try:
        for pair in value:
            if not isinstance(pair, list) or len(pair) != 2:
                raise TypeError
            name, text = pair
            if not isinstance(name, str) or not isinstance(text, str):
                raise TypeError
            if http_rules and (_NAME.fullmatch(name) is None or _VALUE.fullmatch(text) is None):
                raise ChannelProtocolError(f"a channel frame header {name[:40]!r} is not a valid HTTP header")
            out.append((name.encode("latin-1"), text.encode("latin-1")))
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError: not latin-1
        raise ChannelProtocolError("channel frame headers are not a list of [name, value] latin-1 strings") from None
    return out


def _object(data: bytes) -> dict[str, object]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise ChannelProtocolError("a channel frame head is not JSON") from None
    if not isinstance(value, dict):
        raise ChannelProtocolError("a channel frame head is not a JSON object")
    return value


def _with_body(meta: Mapping[str, object], body: bytes) -> bytes:
    data = json.dumps(meta, separators=(",", ":")).encode()
    return _LENGTH.pack(len(data)) + data + body


def _split(kind: str, payload: bytes) -> tuple[dict[str, object], bytes]:
    if len(payload) < _LENGTH.size:
        raise ChannelProtocolError(f"a {kind} frame has no head length")
    (length,) = _LENGTH.unpack_from(payload)
    end = _LENGTH.size + length
    if end > len(payload):
        raise ChannelProtocolError(f"a {kind} frame's head of {length} bytes runs past the frame")
    return _object(payload[_LENGTH.size : end]), payload[end:]


def encode_request(stream: int, head: RequestHead, body: bytes) -> bytes:
    meta = {"m": head.method, "t": head.target.decode("latin-1"), "h": _strings(head.headers)}
    return encode(Kind.REQUEST, stream, _with_body(meta, body))


def decode_request(payload: bytes) -> tuple[RequestHead, bytes]:
    meta, body = _split("REQUEST", payload)
    method, target = meta.get("m"), meta.get("t")
    if not isinstance(method, str) or _NAME.fullmatch(method) is None:
        raise ChannelProtocolError("a REQUEST frame's method is not a token")
    if not isinstance(target, str) or not target.startswith("/") or not target.isascii():
        raise ChannelProtocolError("a REQUEST frame's target is not an origin-form ASCII path")
    return RequestHead(method, target.encode("ascii"), _headers(meta.get("h"), http_rules=True)), body


def _response_meta(head: ResponseHead) -> Mapping[str, object]:
    return {"s": head.status, "h": _strings(head.headers)}


def _response_head(meta: dict[str, object]) -> ResponseHead:
    status = meta.get("s")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
        raise ChannelProtocolError("a response frame's status is not a 3-digit number")
    return ResponseHead(status, _headers(meta.get("h"), http_rules=False))


def encode_start(stream: int, head: ResponseHead) -> bytes:
    return encode(Kind.START, stream, json.dumps(_response_meta(head), separators=(",", ":")).encode())


def decode_start(payload: bytes) -> ResponseHead:
    return _response_head(_object(payload))


def encode_whole(stream: int, head: ResponseHead, body: bytes) -> bytes:
    return encode(Kind.WHOLE, stream, _with_body(_response_meta(head), body))


def decode_whole(payload: bytes) -> tuple[ResponseHead, bytes]:
    meta, body = _split("WHOLE", payload)
    return _response_head(meta), body


def encode_credit(stream: int, size: int) -> bytes:
    return encode(Kind.CREDIT, stream, _LENGTH.pack(size))


def decode_credit(payload: bytes) -> int:
    if len(payload) != _LENGTH.size:
        raise ChannelProtocolError("a CREDIT frame's payload is not 4 bytes")
    (size,) = _LENGTH.unpack(payload)
    return int(size)
