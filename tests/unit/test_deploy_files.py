"""fly.toml, litefs.yml and the Dockerfile agree with Fly's and LiteFS's documented configuration
(shared/reference/fly-platform.md, sections 3 and 4.1) and with the library's own settings."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml

from forwarder.middleware.classify import INTERNAL_PREFIX
from forwarder.settings import ForwarderSettings

ROOT = Path(__file__).resolve().parents[2]

FLY_TOP = {"app", "primary_region", "kill_signal", "kill_timeout", "build", "env", "mounts", "http_service", "deploy"}
FLY_BUILD = {"dockerfile", "image"}
FLY_MOUNTS = {"source", "destination", "processes", "initial_size", "snapshot_retention"}
FLY_HTTP_SERVICE = {
    "internal_port",
    "force_https",
    "auto_stop_machines",
    "auto_start_machines",
    "min_machines_running",
    "processes",
    "concurrency",
    "checks",
}
FLY_CONCURRENCY = {"type", "soft_limit", "hard_limit"}
FLY_CHECK = {"grace_period", "interval", "timeout", "method", "path", "protocol", "tls_skip_verify", "headers"}

LITEFS = {
    "exit-on-error": None,
    "skip-sync": None,
    "strict-verify": None,
    "exec": None,
    "data": {"dir", "compress", "retention", "retention-monitor-interval"},
    "fuse": {"dir", "allow-other", "debug"},
    "http": {"addr", "snapshot-timeout"},
    "proxy": {"addr", "target", "db", "debug", "passthrough", "always-forward", "max-lag"},
    "lease": {
        "type",
        "hostname",
        "advertise-url",
        "candidate",
        "promote",
        "reconnect-delay",
        "demote-delay",
        "databases",
        "consul",
    },
    "log": {"format", "timestamp", "debug"},
}
LITEFS_CONSUL = {"url", "key", "ttl", "lock-delay"}


def fly() -> dict[str, Any]:
    return tomllib.loads((ROOT / "fly.toml").read_text())


def litefs() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "litefs.yml").read_text())
    assert isinstance(data, dict)
    return data


def exec_argv() -> list[str]:
    """The app's command: the last of litefs.yml's `exec` list (LiteFS runs them in order)."""
    commands = litefs()["exec"]
    assert [shlex.split(c["cmd"]) for c in commands[:-1]] == [["forwarder", "check", "--no-primary"]]
    return shlex.split(commands[-1]["cmd"])


def test_fly_toml_uses_only_documented_keys() -> None:
    config = fly()
    assert set(config) <= FLY_TOP
    assert set(config["build"]) <= FLY_BUILD
    assert set(config["mounts"]) <= FLY_MOUNTS
    service = config["http_service"]
    assert set(service) <= FLY_HTTP_SERVICE
    assert set(service["concurrency"]) <= FLY_CONCURRENCY
    for check in service["checks"]:
        assert set(check) <= FLY_CHECK


def test_fly_toml_follows_the_litefs_rules() -> None:
    config = fly()
    assert config["http_service"]["auto_stop_machines"] == "off"
    assert config["http_service"]["auto_start_machines"] is False
    assert config["mounts"]["destination"] == litefs()["data"]["dir"]
    assert config["primary_region"]
    assert all(isinstance(v, str) for v in config["env"].values()), "[env] values must be strings"
    assert not any(name.startswith("FLY_") for name in config["env"]), "[env] names may not begin with FLY_"
    assert "FORWARDER_SECRET" not in config["env"], "the secret goes in `fly secrets`, not fly.toml"


def test_health_check_path_and_ports_agree_with_the_library() -> None:
    config = fly()
    (check,) = config["http_service"]["checks"]
    assert check["path"] == INTERNAL_PREFIX + "health"
    port = config["http_service"]["internal_port"]
    assert int(config["env"]["FORWARDER_PORT"]) == port
    argv = exec_argv()
    assert argv[0] == "uvicorn" and argv[argv.index("--port") + 1] == str(port)
    # `::` so other machines reach the RPC endpoint over 6PN (IPv6), and the Fly proxy over IPv4.
    assert argv[argv.index("--host") + 1] == "::"


def test_env_names_are_settings_of_the_library() -> None:
    fields = {f"FORWARDER_{name.upper()}" for name in ForwarderSettings.model_fields}
    env = fly()["env"]
    assert set(env) <= fields, set(env) - fields
    settings = ForwarderSettings.load(_env_file=None, secret="x", **{k[10:].lower(): v for k, v in env.items()})
    assert settings.engine == "litefs"
    assert settings.database.parent == Path(litefs()["fuse"]["dir"])


def test_litefs_yml_uses_only_documented_keys() -> None:
    config = litefs()
    assert set(config) <= set(LITEFS)
    for key, allowed in LITEFS.items():
        if allowed is not None and key in config:
            assert set(config[key]) <= allowed, (key, set(config[key]) - allowed)
    assert set(config["lease"]["consul"]) <= LITEFS_CONSUL


def test_litefs_yml_elects_in_the_primary_region_and_leaves_forwarding_to_us() -> None:
    config = litefs()
    lease = config["lease"]
    assert lease["type"] == "consul"
    text = (ROOT / "litefs.yml").read_text()
    assert re.search(r"candidate:\s*\$\{FLY_REGION == PRIMARY_REGION\}", text)
    assert "${FLY_CONSUL_URL}" in lease["consul"]["url"]
    assert lease["advertise-url"] == "http://${HOSTNAME}.vm.${FLY_APP_NAME}.internal:20202"
    assert "proxy" not in config, "forwarder forwards; the LiteFS proxy must not sit in front of it"
    assert exec_argv()[1] == "example_app:app"


def test_dockerfile_mounts_litefs_and_installs_the_app() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "fuse3" in text
    assert re.search(r"COPY --from=flyio/litefs:[\d.]+ /usr/local/bin/litefs /usr/local/bin/litefs", text)
    assert "COPY litefs.yml /etc/litefs.yml" in text
    assert re.search(r'ENTRYPOINT \["litefs", "mount"\]', text)
    assert "COPY forwarder ./forwarder" in text and "COPY example_app ./example_app" in text
    assert not re.search(r"^USER ", text, re.M), "LiteFS must run as root"


def test_the_node_checks_its_environment_before_the_app_starts() -> None:
    """`forwarder check` runs first, so a bad setting is one line in the logs, never a traceback."""
    from forwarder.cli import _parser

    first, _ = litefs()["exec"]
    args = _parser().parse_args(shlex.split(first["cmd"])[1:])
    assert args.command == "check" and args.no_primary
