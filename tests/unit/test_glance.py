"""`Glance`'s look at the headers decides exactly what a walk over every header decides, for any headers.

`Glance` searches the names in C where it can; it must agree with the plain rule on every input,
because a node header it missed would skip its signature check, and a framing header it missed
would skip the framing check.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from forwarder.middleware.guard import Glance, framing_problem
from forwarder.node_headers import CLIENT_HEADERS, PREFIX

# Names the checks care about, in any case, among ordinary ones and look-alikes.
_NAMES = st.sampled_from(
    [
        b"host",
        b"cookie",
        b"Cookie",
        b"COOKIE",
        b"content-length",
        b"Content-Length",
        b"transfer-encoding",
        b"fly-replay-src",
        b"Fly-Replay-Src",
        b"forwarder-txid",
        b"Forwarder-Txid",
        b"forwarder-signature",
        b"forwarder-node",
        b"Forwarder-Node",
        b"forwarder-",
        b"x-forwarder-node",
        b"forwarderx",
        b"cookie2",
        b"accept",
        b"user-agent",
        b"1",
        b"-",
        b"",
    ]
)
_VALUES = st.sampled_from([b"5", b"120", b"", b"5, 5", b"5,6", b" 5", b"-1", b"chunked"]) | st.binary(max_size=12)
_HEADERS = st.lists(st.tuples(_NAMES | st.binary(max_size=20), _VALUES), max_size=16)


def _reference(headers: list[tuple[bytes, bytes]]) -> tuple[bool, bool, bool, list[bytes], bytes | None]:
    """The rule, header by header: (framed, claimed, replayed, cookies, token)."""
    framed = claimed = replayed = False
    cookies: list[bytes] = []
    token: bytes | None = None
    for key, value in headers:
        name = key.lower()
        if name == b"cookie":
            cookies.append(value)
        if name in (b"content-length", b"transfer-encoding"):
            framed = True
        if name == b"fly-replay-src":
            replayed = True
        if name == b"forwarder-txid":
            token = value
        elif name.startswith(PREFIX) and name not in CLIENT_HEADERS:
            claimed = True
    return framed, claimed, replayed, cookies, token


@settings(max_examples=600, deadline=None)
@given(_HEADERS)
def test_the_glance_finds_what_a_walk_over_every_header_finds(headers: list[tuple[bytes, bytes]]) -> None:
    glance = Glance(headers)
    assert (glance.framed, glance.claimed, glance.replayed, glance.cookies, glance.token) == _reference(headers)
    if glance.plain_length:  # the framing check is skipped: it must have had nothing to refuse
        assert framing_problem(headers) is None


def test_one_content_length_of_digits_skips_the_framing_walk_and_anything_else_does_not() -> None:
    assert Glance([(b"host", b"a"), (b"content-length", b"12")]).plain_length
    for headers in (
        [(b"content-length", b"12"), (b"transfer-encoding", b"chunked")],
        [(b"content-length", b"12"), (b"content-length", b"12")],
        [(b"content-length", b"1 2")],
        [(b"Content-Length", b"12")],
        [(b"transfer-encoding", b"chunked")],
    ):
        assert not Glance(headers).plain_length, headers


def test_a_browser_request_with_one_cookie_and_a_node_header_in_capitals() -> None:
    headers = [(b"host", b"a"), (b"cookie", b"__txid=1"), (b"accept", b"*/*"), (b"Forwarder-Node", b"n1")]
    glance = Glance(headers)
    assert glance.cookies == [b"__txid=1"]
    assert glance.claimed
