"""The node channel's frames: what is written reads back the same, and any other bytes are a
`ChannelProtocolError`, never another exception (the channel is then closed, nothing else breaks)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

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
