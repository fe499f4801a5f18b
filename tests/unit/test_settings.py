from __future__ import annotations

import os
from typing import Any

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


# -- the text of settings errors: one per field type --------------------------------------------


def _error(**env: str) -> str:
    os.environ.update(env)
    with pytest.raises(ConfigurationError) as caught:
        ForwarderSettings.load()
    return str(caught.value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (  # literal
            {"FORWARDER_MODE": "bogus"},
            "FORWARDER_MODE='bogus' is not allowed: use one of auto, proxy, replay, or unset it for the default (auto)",
        ),
        (  # bool (optional)
            {"FORWARDER_COOKIE_SECURE": "maybe"},
            "FORWARDER_COOKIE_SECURE='maybe' is not allowed: use true or false (or 1/0, yes/no, on/off), or unset it",
        ),
        (  # int with a bound
            {"FORWARDER_COOKIE_MAX_AGE": "0"},
            "FORWARDER_COOKIE_MAX_AGE='0' is not allowed: use a whole number at least 1, "
            "or unset it for the default (300)",
        ),
        (  # int that is no number
            {"FORWARDER_PORT": "eighty"},
            "FORWARDER_PORT='eighty' is not allowed: use a whole number, or unset it for the default (8080)",
        ),
        (  # float with a bound
            {"FORWARDER_RPC_TIMEOUT": "-1"},
            "FORWARDER_RPC_TIMEOUT='-1' is not allowed: use a number greater than 0, or unset it for the default (5.0)",
        ),
        (  # a pattern
            {"FORWARDER_REPLAY_TIMEOUT": "soon"},
            "FORWARDER_REPLAY_TIMEOUT='soon' is not allowed: use a duration such as 5s or 800ms, or unset it",
        ),
        (  # text with a minimum length
            {"FORWARDER_COOKIE_NAME": ""},
            "FORWARDER_COOKIE_NAME='' is not allowed: use text that is not empty, or unset it for the default (__txid)",
        ),
        (  # the URL check
            {"FORWARDER_PRIMARY_URL": "10.0.0.2:8080"},
            "FORWARDER_PRIMARY_URL='10.0.0.2:8080' is not allowed (must be an http(s) URL like "
            "http://10.0.0.2:8080): use an http(s) URL such as http://10.0.0.2:8080, or unset it",
        ),
    ],
)
def test_a_bad_variable_is_named_once_with_what_is_allowed_and_the_fix(env: dict[str, str], expected: str) -> None:
    text = _error(FORWARDER_SECRET="s", **env)
    assert text == f"invalid forwarder settings: {expected}"
    assert "FORWARDER_FORWARDER_" not in text


def test_every_bad_variable_is_named() -> None:
    text = _error(FORWARDER_MODE="bogus", FORWARDER_ON_LAG="panic")
    assert "FORWARDER_MODE='bogus'" in text and "FORWARDER_ON_LAG='panic'" in text
    assert "use one of forward, error, stale" in text


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"database": 5}, "database=5 (an argument of ForwarderSettings.load) is not allowed: pass a file path"),
        (
            {"read_methods": 5},
            "read_methods=5 (an argument of ForwarderSettings.load) is not allowed: "
            "pass a comma-separated list such as GET,HEAD",
        ),
        (  # a secret: its value is never shown
            {"secret": 12345},
            "secret (an argument of ForwarderSettings.load) is not allowed: "
            "pass a secret string (the same random value on every node)",
        ),
    ],
)
def test_an_argument_in_code_is_named_as_an_argument(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ForwarderSettings.load(**overrides)
    assert str(caught.value) == f"invalid forwarder settings: {expected}"
    assert "12345" not in str(caught.value)


def test_a_value_read_from_a_fly_variable_names_the_variable_to_set() -> None:
    """No Fly-read field of ForwarderSettings can fail today (all are text): a model with one that can."""
    from pydantic import AliasChoices, Field, ValidationError
    from pydantic_settings import BaseSettings

    from forwarder.settings_errors import settings_problems

    class WithFlyPort(BaseSettings):
        port: int = Field(8080, validation_alias=AliasChoices("FORWARDER_PORT", "port", "FLY_PORT"))

    os.environ["FLY_PORT"] = "http"
    no_arguments: dict[str, Any] = {}
    with pytest.raises(ValidationError) as caught:
        WithFlyPort(**no_arguments)
    assert settings_problems(caught.value, WithFlyPort) == (
        "invalid forwarder settings: FLY_PORT='http' is not allowed: "
        "set FORWARDER_PORT (it wins over FLY_PORT) to a whole number"
    )
