"""The node channel's frames: what is written reads back the same, and any other bytes are a
`ChannelProtocolError`, never another exception (the channel is then closed, nothing else breaks)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings, strategies as st

from forwarder.channel.frames import (
    Kind,
    RequestHead,
    ResponseHead,
    decode,
    decode_credit,
    decode_request,
    decode_start,
    decode_whole,
    encode_credit,
    encode_request,
    encode_start,
    encode_whole,
)
from forwarder.exceptions import ChannelProtocolError

TOKEN = st.text(
    st.sampled_from("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"), min_size=1
)
VALUE = st.binary(max_size=60).filter(lambda v: not any(c in v for c in b"\r\n\x00"))
HEADERS = st.lists(st.tuples(TOKEN.map(str.encode), VALUE), max_size=8)
TARGET = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(lambda t: ("/" + t).encode())


@given(
    stream=st.integers(0, 2**32 - 1),
    method=st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), min_size=1, max_size=10),
    target=TARGET,
    headers=HEADERS,
    body=st.binary(max_size=200),
)
def test_a_request_frame_reads_back_as_written(
    stream: int, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    frame = decode(encode_request(stream, RequestHead(method, target, headers), body))
    assert (frame.kind, frame.stream) == (Kind.REQUEST, stream)
    assert decode_request(frame.payload) == (RequestHead(method, target, headers), body)


@given(stream=st.integers(0, 2**32 - 1), status=st.integers(100, 999), headers=HEADERS, body=st.binary(max_size=200))
def test_response_frames_read_back_as_written(
    stream: int, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    head = ResponseHead(status, headers)
    assert decode_start(decode(encode_start(stream, head)).payload) == head
    whole = decode(encode_whole(stream, head, body))
    assert (whole.kind, whole.stream) == (Kind.WHOLE, stream)
    assert decode_whole(whole.payload) == (head, body)
    assert decode_credit(decode(encode_credit(stream, len(body))).payload) == len(body)


@given(st.binary(max_size=80))
def test_any_other_bytes_are_a_protocol_error_and_nothing_else(message: bytes) -> None:
    readers = [decode_request, decode_start, decode_whole, decode_credit]
    try:
        frame = decode(message)
    except ChannelProtocolError:
        return
    for read in readers:
        try:
            read(frame.payload)
        except ChannelProtocolError:
            pass


@pytest.mark.parametrize(
    "head",
    [
        b'{"m":"GET","t":"http://elsewhere/x","h":[]}',
        b'{"m":"GET","t":"/caf\\u00e9","h":[]}',
        b'{"m":"G T","t":"/x","h":[]}',
        b'{"m":"GET","t":"/x","h":[["a"]]}',
        b'{"m":"GET","t":"/x","h":[["x","\\u0100"]]}',
        b'{"m":"GET","t":"/x","h":[["x","a\\r\\nb: c"]]}',
        b'["GET"]',
    ],
    ids=["absolute target", "non-ASCII target", "method with a space", "header pair", "non-latin-1", "CRLF", "array"],
)
def test_a_request_head_http_would_refuse_is_refused(head: bytes) -> None:
    payload = len(head).to_bytes(4, "big") + head
    with pytest.raises(ChannelProtocolError):
        decode_request(payload)


def _headers_one_by_one(value: list[list[str]]) -> list[tuple[bytes, bytes]]:
    """The request-header rule (RFC 9110 tokens; no CR, LF or NUL in a value), written out header by header."""
    name_rule, value_rule = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"), re.compile(r"[^\r\n\x00]*")
    out = []
    for name, text in value:
        if name_rule.fullmatch(name) is None or value_rule.fullmatch(text) is None:
            raise ChannelProtocolError("refused")
        out.append((name.encode("latin-1"), text.encode("latin-1")))
    return out


# Few characters each, so that a name with a space or a colon between token characters, a value with
# a CR, LF or NUL, and text outside latin-1 all come up often.
HEADER_NAME = st.text(st.sampled_from("aZ9-~  :\xe9\u0100"), max_size=4)
HEADER_VALUE = st.text(st.sampled_from("a \t\r\n\x00\xe9\u0100"), max_size=3)


@settings(max_examples=600)
@given(st.lists(st.tuples(HEADER_NAME, HEADER_VALUE).map(list), max_size=5))
def test_request_headers_are_refused_exactly_when_one_of_them_breaks_the_http_rules(value: list[list[str]]) -> None:
    head = json.dumps({"m": "POST", "t": "/x", "h": value}).encode()
    try:
        expected: list[tuple[bytes, bytes]] | None = _headers_one_by_one(value)
    except (ChannelProtocolError, UnicodeEncodeError):
        expected = None
    if expected is None:
        with pytest.raises(ChannelProtocolError):
            decode_request(len(head).to_bytes(4, "big") + head)
    else:
        assert decode_request(len(head).to_bytes(4, "big") + head)[0].headers == expected
