from __future__ import annotations

import os

import pytest

from forwarder import ConfigurationError, Forwarder, ForwarderSettings, MemoryEngine, MemoryLog, Role


def test_a_replica_without_the_secret_refuses_to_start() -> None:
    os.environ["FORWARDER_PRIMARY_URL"] = "http://10.0.0.2:8080"
    with pytest.raises(ConfigurationError, match="FORWARDER_SECRET is not set"):
        ForwarderSettings.load()


def test_a_litestream_replica_needs_the_primary_url() -> None:
    os.environ.update(FORWARDER_ROLE="replica", FORWARDER_SECRET="s")
    with pytest.raises(ConfigurationError, match="FORWARDER_PRIMARY_URL is not set"):
        ForwarderSettings.load()


def test_litefs_needs_the_secret_on_every_node() -> None:
    os.environ["FORWARDER_ENGINE"] = "litefs"
    with pytest.raises(ConfigurationError, match="any node can become a replica"):
        ForwarderSettings.load()


def test_defaults_make_a_single_primary() -> None:
    settings = ForwarderSettings.load()
    assert settings.resolved_role == "primary"
    assert settings.mode == "auto" and settings.on_lag == "forward"
    assert settings.socket_path == settings.database.parent / "litestream.sock"


def test_fly_variables_are_honoured_and_forwarder_ones_win() -> None:
    os.environ.update(FLY_MACHINE_ID="0e286d3c123456", FLY_REGION="ams", PRIMARY_REGION="fra", FLY_APP_NAME="demo")
    settings = ForwarderSettings.load()
    assert (settings.node_id, settings.region, settings.primary_region, settings.app_name) == (
        "0e286d3c123456",
        "ams",
        "fra",
        "demo",
    )
    os.environ["FORWARDER_REGION"] = "syd"
    assert ForwarderSettings.load().region == "syd"


def test_comma_separated_lists() -> None:
    os.environ.update(FORWARDER_PASSTHROUGH="/static/*, /favicon.ico", FORWARDER_READ_METHODS="get,head,REPORT")
    settings = ForwarderSettings.load()
    assert settings.passthrough == ("/static/*", "/favicon.ico")
    assert settings.routing_policy().read_methods == frozenset({"GET", "HEAD", "REPORT"})


@pytest.mark.parametrize(
    ("name", "value", "word"),
    [
        ("FORWARDER_MODE", "sometimes", "FORWARDER_MODE"),
        ("FORWARDER_RPC_TIMEOUT", "-1", "FORWARDER_RPC_TIMEOUT"),
        ("FORWARDER_PRIMARY_URL", "10.0.0.2:8080", "http(s) URL"),
        ("FORWARDER_REPLAY_TIMEOUT", "soon", "FORWARDER_REPLAY_TIMEOUT"),
        ("FORWARDER_ON_LAG", "panic", "FORWARDER_ON_LAG"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, word: str) -> None:
    os.environ.update({name: value, "FORWARDER_SECRET": "s"})
    with pytest.raises(ConfigurationError) as caught:
        ForwarderSettings.load()
    assert word in str(caught.value)


def test_the_memory_engine_cannot_come_from_the_environment() -> None:
    os.environ["FORWARDER_ENGINE"] = "memory"
    with pytest.raises(ConfigurationError, match="build MemoryEngine yourself"):
        Forwarder.from_settings()


def test_from_settings_with_an_engine_given() -> None:
    os.environ.update(FORWARDER_NODE_ID="n1", FORWARDER_REGION="fra")
    forwarder = Forwarder.from_settings(engine=MemoryEngine(MemoryLog(), Role.PRIMARY))
    assert forwarder.is_primary and forwarder.topology.primary_id == "n1"
    assert forwarder.topology.replay_target() == "instance=n1"


def test_security_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from forwarder.security import SecurityPolicy

    assert ForwarderSettings.load().security_policy() == SecurityPolicy()
    monkeypatch.setenv("FORWARDER_PUBLIC_HEALTH", "true")
    monkeypatch.setenv("FORWARDER_RPC_MAX_BODY", "2048")
    monkeypatch.setenv("FORWARDER_BUFFER_BODY", "1024")
    monkeypatch.setenv("FORWARDER_BODY_TIMEOUT", "2.5")
    monkeypatch.setenv("FORWARDER_MAX_STREAMED_UPLOADS", "8")
    assert ForwarderSettings.load().security_policy() == SecurityPolicy(
        public_health=True, rpc_max_body=2048, buffer_body=1024, body_timeout=2.5, max_streamed_uploads=8
    )
