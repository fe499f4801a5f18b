"""Parsing of `fly-replay` values, the edge's choice of target nodes, and `parse_latency`."""

from __future__ import annotations

import pytest

from forwarder.dev.edge.regions import (
    Choice,
    EdgeNode,
    fallback_choice,
    first_choice,
    nodes_in_regions,
    parse_latency,
    parse_region_list,
    replay_choice,
)
from forwarder.dev.edge.replay import (
    InvalidReplay,
    ReplayInstruction,
    Transform,
    parse_duration,
    parse_replay_header,
    parse_replay_json,
)

N1 = EdgeNode("n1", "fra", "http://n1")
N2 = EdgeNode("n2", "ams", "http://n2")
N3 = EdgeNode("n3", "syd", "http://n3")
N4 = EdgeNode("n4", "ams", "http://n4")
N5 = EdgeNode("n5", "iad", "http://n5")
NODES = (N1, N2, N3, N4, N5)


def ids(choice: Choice) -> list[str]:
    return [node.id for node in choice.nodes]


# -- parsing the header -------------------------------------------------------------------------


def test_plain_region() -> None:
    assert parse_replay_header("region=sjc") == ReplayInstruction(regions=("sjc",), source="region=sjc")


def test_quoted_region_list_keeps_order() -> None:
    assert parse_replay_header('region="iad,ord,us,na"').regions == ("iad", "ord", "us", "na")
    assert parse_replay_header('region="sjc, any"').regions == ("sjc", "any")


def test_instance_and_state() -> None:
    parsed = parse_replay_header("instance=00bb33ff;state=captured_write")
    assert parsed.instance == "00bb33ff"
    assert parsed.state == "captured_write"
    assert parsed.regions == ()


def test_all_fields() -> None:
    parsed = parse_replay_header(
        'Region="iad,ord"; prefer_instance=90801679a10038; state=s1; elsewhere=true; '
        "timeout=800ms; fallback=prefer_self"
    )
    assert parsed.regions == ("iad", "ord")
    assert parsed.prefer_instance == "90801679a10038"
    assert parsed.state == "s1"
    assert parsed.elsewhere is True
    assert parsed.timeout == pytest.approx(0.8)
    assert parsed.fallback == "prefer_self"


def test_timeout_units_and_app() -> None:
    parsed = parse_replay_header("app=my-worker;timeout=10s;fallback=force_self")
    assert (parsed.app, parsed.timeout, parsed.fallback) == ("my-worker", 10.0, "force_self")


def test_quoted_state_may_hold_a_semicolon() -> None:
    assert parse_replay_header('instance=n1;state="a;b"').state == "a;b"


def test_elsewhere_alone_is_a_target() -> None:
    assert parse_replay_header("elsewhere=true").elsewhere is True


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("region=iad,ord", 'must be quoted, as in region="iad,ord"'),
        ("regoin=iad", "unknown field 'regoin'"),
        ("region=iad;region=ord", "appears twice"),
        ("instance", "is not key=value"),
        ("instance=", "field 'instance' is empty"),
        ('region="iad', "double quote is not closed"),
        ("state=only", "names no target"),
        ("", "names no target"),
        ("instance=n1;timeout=10", "timeout"),
        ("instance=n1;fallback=self", "fallback must be force_self or prefer_self"),
        ("region=iad;elsewhere=yes", "elsewhere must be true or false"),
        ("instance=a b", "is not a machine or app name"),
        ('region="iad,!x"', "'!x' is not a region code"),
        ("instance=n1;prefer_instance=n2", "not both"),
    ],
)
def test_garbage_is_a_clear_error(value: str, words: str) -> None:
    with pytest.raises(InvalidReplay, match=words.replace("(", r"\(")) as info:
        parse_replay_header(value)
    assert repr(value) in str(info.value) or value == ""


# -- the JSON form ------------------------------------------------------------------------------


def test_json_form_with_transform() -> None:
    parsed = parse_replay_json(
        b'{"region": "iad,us", "state": "s", "elsewhere": true, "timeout": "2s",'
        b' "transform": {"path": "/new?x=1", "delete_headers": ["Cookie"],'
        b' "set_headers": [{"name": "x-custom", "value": "v"}]}}'
    )
    assert parsed.regions == ("iad", "us")
    assert parsed.state == "s"
    assert parsed.elsewhere is True
    assert parsed.timeout == 2.0
    assert parsed.transform == Transform(path="/new?x=1", delete_headers=("cookie",), set_headers=(("x-custom", "v"),))


def test_json_region_may_be_a_list() -> None:
    assert parse_replay_json(b'{"region": ["ams", "fra"]}').regions == ("ams", "fra")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "is not valid JSON"),
        (b"[1]", "must be an object"),
        (b'{"instance": 5}', "must be a string"),
        (b'{"instance": "n1", "bogus": 1}', "unknown fields"),
        (b'{"instance": "n1", "transform": {"path": "no-slash"}}', "transform expects"),
        (b'{"state": "x"}', "names no target"),
    ],
)
def test_json_garbage_is_a_clear_error(body: bytes, words: str) -> None:
    with pytest.raises(InvalidReplay, match=words):
        parse_replay_json(body)


# -- choosing replay targets --------------------------------------------------------------------


def test_instance_is_forced() -> None:
    assert ids(replay_choice(NODES, parse_replay_header("instance=n3"), N2)) == ["n3"]
    assert ids(replay_choice(NODES, parse_replay_header("instance=gone"), N2)) == []


def test_prefer_instance_known_goes_first_then_the_rest() -> None:
    choice = replay_choice(NODES, parse_replay_header("prefer_instance=n3"), N2)
    assert ids(choice) == ["n3", "n1", "n2", "n4", "n5"]
    assert choice.extra_headers(N3) == []
    assert choice.extra_headers(N1) == [("fly-preferred-instance-unavailable", "n3")]


def test_prefer_instance_unknown_falls_back_to_matching_nodes() -> None:
    choice = replay_choice(NODES, parse_replay_header("prefer_instance=gone;region=ams"), N1)
    assert ids(choice) == ["n2", "n4"]
    assert choice.extra_headers(N2) == [("fly-preferred-instance-unavailable", "gone")]


def test_region_list_in_order_of_preference() -> None:
    assert ids(replay_choice(NODES, parse_replay_header('region="syd,ams"'), N1)) == ["n3", "n2", "n4"]
    assert ids(replay_choice(NODES, parse_replay_header('region="lax,fra"'), N2)) == ["n1"]
    assert ids(replay_choice(NODES, parse_replay_header("region=lax"), N2)) == []


def test_region_any_and_aliases() -> None:
    assert ids(replay_choice(NODES, parse_replay_header('region="syd,any"'), N1)) == ["n3", "n1", "n2", "n4", "n5"]
    assert ids(replay_choice(NODES, parse_replay_header("region=us"), N1)) == ["n5"]
    assert ids(replay_choice(NODES, parse_replay_header('region="apac,eu"'), N5)) == ["n3", "n1", "n2", "n4"]


def test_elsewhere_excludes_the_source() -> None:
    assert ids(replay_choice(NODES, parse_replay_header("elsewhere=true"), N2)) == ["n1", "n3", "n4", "n5"]
    assert ids(replay_choice(NODES, parse_replay_header("region=ams;elsewhere=true"), N2)) == ["n4"]
    assert ids(replay_choice(NODES, parse_replay_header("instance=n2;elsewhere=true"), N2)) == []


def test_fallback_choice() -> None:
    assert ids(fallback_choice(NODES, "force_self", N2)) == ["n2"]
    assert ids(fallback_choice(NODES, "prefer_self", N2)) == ["n2", "n4", "n1", "n3", "n5"]


# -- choosing the first node --------------------------------------------------------------------


def test_first_choice_round_robin_order_with_same_region_failover() -> None:
    rotation = (N2, N3, N4, N5, N1)
    assert ids(first_choice(rotation)) == ["n2", "n4", "n3", "n5", "n1"]


def test_first_choice_routing_headers() -> None:
    assert ids(first_choice(NODES, force_instance="n3")) == ["n3"]
    assert ids(first_choice(NODES, force_instance="gone")) == []
    prefer = first_choice(NODES, prefer_instance="gone")
    assert ids(prefer) == ["n1", "n2", "n3", "n4", "n5"]
    assert prefer.extra_headers(N1) == [("fly-preferred-instance-unavailable", "gone")]
    assert ids(first_choice(NODES, force_regions=("ams",))) == ["n2", "n4"]
    assert ids(first_choice(NODES, force_regions=("lax",))) == []
    assert ids(first_choice(NODES, prefer_regions=("lax", "syd"))) == ["n3", "n1", "n2", "n4", "n5"]
    assert ids(first_choice(NODES, prefer_regions=("lax",))) == ["n1", "n2", "n3", "n4", "n5"]


def test_nodes_in_regions_lists_each_node_once() -> None:
    assert [n.id for n in nodes_in_regions(NODES, ("ams", "eu", "any"))] == ["n2", "n4", "n1", "n3", "n5"]


def test_parse_region_list() -> None:
    assert parse_region_list(" AMS, fra ,") == ("ams", "fra")
    assert parse_region_list('"iad,ord"') == ("iad", "ord")
    assert parse_region_list("") == ()


# -- durations and latency ----------------------------------------------------------------------


def test_parse_duration() -> None:
    assert parse_duration("800ms") == pytest.approx(0.8)
    assert parse_duration("10s") == 10.0
    assert parse_duration("1m") == 60.0
    with pytest.raises(ValueError, match="'10' is not a number followed by ms, s or m"):
        parse_duration("10")


def test_parse_latency() -> None:
    assert parse_latency(["ams=80ms", "SYD=0.2s", "fra=0.05"]) == {
        "ams": pytest.approx(0.08),
        "syd": 0.2,
        "fra": 0.05,
    }
    assert parse_latency([]) == {}


@pytest.mark.parametrize("item", ["ams", "ams=", "=80ms", "ams=fast", "ams=-1s", "a ms=1s"])
def test_parse_latency_names_the_bad_item(item: str) -> None:
    with pytest.raises(ValueError, match=f"latency {item!r} is not REGION=DURATION"):
        parse_latency(["fra=1ms", item])
