from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from forwarder.engines.base import Role
from forwarder.middleware.classify import Kind, classify
from forwarder.middleware.cookie import clear_cookie, read_cookie, set_cookie, txid_headers
from forwarder.middleware.replay import came_through_fly_proxy, replay_headers, replayable_size
from forwarder.policy import CookiePolicy, RoutingPolicy
from forwarder.topology import Topology
from forwarder.txid import Txid

from .asgi import http_scope


@pytest.mark.parametrize(
    ("method", "path", "kind", "reason"),
    [
        ("GET", "/x", Kind.READ, "method"),
        ("HEAD", "/x", Kind.READ, "method"),
        ("OPTIONS", "/x", Kind.READ, "method"),
        ("get", "/x", Kind.READ, "method"),
        ("POST", "/x", Kind.WRITE, "method"),
        ("PUT", "/x", Kind.WRITE, "method"),
        ("PATCH", "/x", Kind.WRITE, "method"),
        ("DELETE", "/x", Kind.WRITE, "method"),
        ("PROPFIND", "/x", Kind.WRITE, "method"),
        ("GET", "/admin/users", Kind.WRITE, "always_forward"),
        ("POST", "/static/app.js", Kind.PASSTHROUGH, "passthrough"),
        ("GET", "/static/deep/app.js", Kind.PASSTHROUGH, "passthrough"),
        ("POST", "/_forwarder/rpc/f", Kind.INTERNAL, "internal"),
        ("GET", "/_forwarder/health", Kind.INTERNAL, "internal"),
    ],
)
def test_classification(method: str, path: str, kind: Kind, reason: str) -> None:
    policy = RoutingPolicy(passthrough=("/static/*",), always_forward=("/admin/*",))
    route = classify(method, path, policy)
    assert (route.kind, route.reason) == (kind, reason)


def test_passthrough_wins_over_always_forward_and_methods_are_configurable() -> None:
    policy = RoutingPolicy(passthrough=("/a/*",), always_forward=("/a/*",), read_methods=frozenset({"GET", "REPORT"}))
    assert classify("POST", "/a/b", policy).kind is Kind.PASSTHROUGH
    assert classify("REPORT", "/b", policy).kind is Kind.READ
    assert classify("OPTIONS", "/b", policy).kind is Kind.WRITE


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        (b"__txid=00000000000000ff", Txid(255)),
        (b"a=1; __txid=00000000000000ff; b=2", Txid(255)),
        (b"__txid=ff", None),
        (b"__txid=00000000000000FF", None),
        (b"__txid=", None),
        (b"__txid=zzzzzzzzzzzzzzzz", None),
        (b"other=00000000000000ff", None),
        (b";;;==;", None),
    ],
)
def test_reading_the_cookie_ignores_anything_malformed(cookie: bytes, expected: Txid | None) -> None:
    assert read_cookie(http_scope(headers=[(b"cookie", cookie)]), CookiePolicy()) == expected


def test_reading_the_cookie_with_no_cookie_header() -> None:
    assert read_cookie(http_scope(), CookiePolicy()) is None


def test_cookie_attributes() -> None:
    policy = CookiePolicy()
    plain = http_scope()
    assert set_cookie(policy, plain, Txid(16)) == "__txid=0000000000000010; Path=/; Max-Age=300; HttpOnly; SameSite=Lax"
    https = http_scope(headers=[(b"x-forwarded-proto", b"https")])
    assert set_cookie(policy, https, Txid(16)).endswith("; Secure")
    assert set_cookie(policy, http_scope(scheme="https"), Txid(16)).endswith("; Secure")
    custom = CookiePolicy(name="tx", max_age=10, same_site="strict", secure=False, http_only=False)
    assert set_cookie(custom, https, Txid(1)) == "tx=0000000000000001; Path=/; Max-Age=10; SameSite=Strict"
    assert set_cookie(CookiePolicy(same_site="none"), plain, Txid(1)).endswith("SameSite=None; Secure")
    assert clear_cookie(policy, plain) == "__txid=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
    # The attributes are built once per policy, age and Secure: one request's never leak into another's.
    for _ in range(2):
        assert not set_cookie(policy, plain, Txid(2)).endswith("Secure")
        assert set_cookie(policy, https, Txid(2)).endswith("; Secure")
    ages = [CookiePolicy(max_age=age) for age in range(1, 200)]  # more than the cache keeps
    assert all(f"Max-Age={age}; " in set_cookie(p, plain, Txid(1)) for age, p in enumerate(ages, start=1))


POLICIES = [
    CookiePolicy(),
    CookiePolicy(name="tx", secure=False),
    CookiePolicy(max_age=9),
    CookiePolicy(same_site="none"),
]
SCOPES = [http_scope(), http_scope(headers=[(b"x-forwarded-proto", b"https")]), http_scope(scheme="https")]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(range(len(POLICIES))), st.sampled_from(range(len(SCOPES))), st.integers(0, 3)))
)
def test_txid_headers_are_the_txid_and_cookie_of_each_write_whatever_came_before(
    writes: list[tuple[int, int, int]],
) -> None:
    # The last pair is kept for the next write: a run of the same txid, then any change of txid,
    # policy or scheme, must each get their own headers.
    for policy_index, scope_index, txid in writes:
        policy, scope = POLICIES[policy_index], SCOPES[scope_index]
        expected = (
            (b"forwarder-txid", str(Txid(txid)).encode()),
            (b"set-cookie", set_cookie(policy, scope, Txid(txid)).encode()),
        )
        assert txid_headers(policy, scope, Txid(txid)) == expected


def test_replay_header_names_the_primary_instance_or_region() -> None:
    policy = RoutingPolicy(replay_timeout="5s", replay_fallback="prefer_self")
    topology = Topology("n2", "ams", Role.REPLICA, primary_id="n1", primary_region="fra")
    assert replay_headers(topology, policy, "method") == [
        (b"fly-replay", b"instance=n1;state=method;timeout=5s;fallback=prefer_self")
    ]
    topology.primary_id = None
    # By default a replay that cannot reach the primary comes back here (fallback), to be proxied.
    assert replay_headers(topology, RoutingPolicy(), "readonly") == [
        (b"fly-replay", b"region=fra;state=readonly;fallback=prefer_self")
    ]
    assert replay_headers(topology, RoutingPolicy(replay_fallback=None), "readonly") == [
        (b"fly-replay", b"region=fra;state=readonly")
    ]
    topology.primary_region = None
    assert replay_headers(topology, RoutingPolicy(), "method") is None


@pytest.mark.parametrize(
    ("headers", "buffered", "replayable"),
    [
        ([], None, True),
        ([(b"content-length", b"10")], None, True),
        ([(b"content-length", b"1048575")], None, True),
        ([(b"content-length", b"1048576")], None, False),
        ([(b"content-length", b"nope")], None, False),
        ([(b"transfer-encoding", b"chunked")], None, False),
        ([(b"transfer-encoding", b"chunked")], b"x" * 10, True),
        ([], b"x" * 1048576, False),
    ],
)
def test_replayable_size(headers: list[tuple[bytes, bytes]], buffered: bytes | None, replayable: bool) -> None:
    assert replayable_size(http_scope(headers=headers), buffered) is replayable


def test_behind_the_fly_proxy() -> None:
    assert came_through_fly_proxy(http_scope(headers=[(b"fly-client-ip", b"1.2.3.4")]))
    assert not came_through_fly_proxy(http_scope())
