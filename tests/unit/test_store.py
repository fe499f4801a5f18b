"""Stores (file, s3), the `replicate` config and `restore -f` command for each, and the one Litestream environment."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder.dev.replication import Follower, Replicator
from forwarder.engines.litestream_config import (
    FILE_INTERVALS,
    S3_INTERVALS,
    Intervals,
    litestream_binary,
    litestream_environ,
    replicate_config,
    restore_argv,
)
from forwarder.exceptions import ConfigurationError
from forwarder.store import FileStore, S3Store, parse_store
from tests.litestream_guard import launch_problems

KEYS = {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
ENDPOINT = "http://127.0.0.1:9000"


def s3_store(**overrides: Any) -> S3Store:
    options: dict[str, Any] = dict(
        bucket="fwd-test", path="app.db", access_key_id="AKIDTEST", secret_access_key="s3cr3t", endpoint=ENDPOINT
    )
    options.update(overrides)
    return S3Store(**options)


def test_an_s3_url_gives_bucket_path_endpoint_region_and_the_environment_s_credentials() -> None:
    store = parse_store(f"s3://fwd-test/prod/app.db?endpoint={ENDPOINT}&region=eu-west-1", environ=KEYS)
    assert store == s3_store(path="prod/app.db", region="eu-west-1")
    assert isinstance(store, S3Store) and store.force_path_style and store.plain_http
    assert store.url() == f"s3://fwd-test/prod/app.db?endpoint={ENDPOINT}&region=eu-west-1&force-path-style=true"
    assert "s3cr3t" not in repr(store) and "s3cr3t" not in store.url() and "s3cr3t" not in store.describe()


def test_litestream_s_own_credential_names_and_spellings_are_accepted() -> None:
    env = {"LITESTREAM_ACCESS_KEY_ID": "K", "LITESTREAM_SECRET_ACCESS_KEY": "S", "AWS_REGION": "auto"}
    store = parse_store("s3://bucket-1/db?forcePathStyle=false", environ=env)
    assert isinstance(store, S3Store)
    assert (store.access_key_id, store.secret_access_key, store.region) == ("K", "S", "auto")
    assert not store.force_path_style and store.endpoint is None and not store.plain_http


@pytest.mark.parametrize(
    ("url", "env", "message"),
    [
        ("s3://fwd-test/app.db", {}, "AWS_ACCESS_KEY_ID"),
        ("s3://fwd-test/", KEYS, "has no path"),
        ("s3://fwd-test/db?endpoint=127.0.0.1:9000", KEYS, "needs its scheme"),
        ("s3://fwd-test/db?bucket-style=x", KEYS, "unknown parameter"),
        ("s3://fwd-test/db?force-path-style=maybe", KEYS, "not true or false"),
        ("gs://fwd-test/db", KEYS, "neither file:// nor s3://"),
        ("file://host/dir", KEYS, "names a host"),
    ],
)
def test_a_bad_store_url_names_the_cause_and_the_fix(url: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_store(url, environ=env)


def test_a_file_url_or_a_plain_path_is_a_file_store(tmp_path: Path) -> None:
    assert parse_store(f"file://{tmp_path}/replica") == FileStore(tmp_path / "replica")
    assert parse_store(str(tmp_path / "replica")) == FileStore(tmp_path / "replica")
    assert FileStore(tmp_path).url() == f"file://{tmp_path}"


def test_the_s3_replicate_config_has_litestream_s_keys() -> None:
    config = yaml.safe_load(
        replicate_config(Path("/data/app.db"), s3_store(), Path("/data/ls.sock"), Intervals(sync=0.1, follow=0.25))
    )
    db = config["dbs"][0]
    assert db["path"] == "/data/app.db" and db["monitor-interval"] == "10ms"
    assert db["replica"] == {
        "type": "s3",
        "bucket": "fwd-test",
        "path": "app.db",
        "endpoint": ENDPOINT,
        "region": "us-east-1",
        "force-path-style": True,
        "access-key-id": "AKIDTEST",
        "secret-access-key": "s3cr3t",
        "sync-interval": "100ms",
    }
    assert config["socket"] == {"enabled": True, "path": "/data/ls.sock"}


def test_the_file_replicate_config_is_unchanged_and_intervals_default_per_store() -> None:
    config = yaml.safe_load(replicate_config(Path("/data/app.db"), Path("/data/replica"), Path("/data/ls.sock")))
    assert config["dbs"][0]["replica"] == {"type": "file", "path": "/data/replica", "sync-interval": "10ms"}
    argv = restore_argv(Path("/node/app.db"), s3_store())
    assert argv[1:] == ["restore", "-f", "-follow-interval", "250ms", "-o", "/node/app.db", s3_store().url()]
    assert restore_argv(Path("/n/app.db"), FileStore(Path("/r")))[3:5] == ["-follow-interval", "10ms"]
    assert (FILE_INTERVALS.follow, S3_INTERVALS.sync, S3_INTERVALS.follow) == (0.01, 0.1, 0.25)
    with pytest.raises(ConfigurationError, match="between 1ms and 1h"):
        Intervals(follow=0)


def test_the_config_keeps_the_store_as_small_as_the_intervals_say() -> None:
    config = yaml.safe_load(replicate_config(Path("/data/app.db"), Path("/data/replica"), Path("/data/ls.sock")))
    assert config["l0-retention"] == "1000ms" and config["l0-retention-check-interval"] == "1000ms"
    assert config["levels"] == [{"interval": "2000ms"}, {"interval": "60000ms"}]
    assert config["snapshot"] == {"interval": "120000ms", "retention": "120000ms"}
    s3 = yaml.safe_load(replicate_config(Path("/data/app.db"), s3_store(), Path("/data/ls.sock")))
    assert s3["levels"][0] == {"interval": "10000ms"} and s3["snapshot"]["retention"] == "3600000ms"
    # An L1 interval of 10 min with a 2 min snapshot, or retention of nothing: said, not written.
    with pytest.raises(ConfigurationError, match="longer than the L1 compaction interval"):
        Intervals(compaction=600, snapshot=120)
    with pytest.raises(ConfigurationError, match="L0 retention 0s"):
        Intervals(l0_retention=0)


def test_the_environment_drops_the_ca_bundle_on_plain_http_and_never_reaches_the_metadata_service() -> None:
    shell = {"PATH": "/bin", "AWS_CA_BUNDLE": "/etc/ssl/ca.pem", "AWS_ACCESS_KEY_ID": "shell-key", "AWS_PROFILE": "p"}
    env = litestream_environ(s3_store(), shell)
    assert env == {"PATH": "/bin", "AWS_EC2_METADATA_DISABLED": "true", **KEYS}
    https = litestream_environ(s3_store(endpoint="https://s3.example.com"), shell)
    assert https["AWS_CA_BUNDLE"] == "/etc/ssl/ca.pem"  # meaningful there: kept
    # A file store gets no credentials at all, the shell's included, and no metadata service either.
    assert litestream_environ(FileStore(Path("/r")), shell) == {
        "PATH": "/bin",
        "AWS_CA_BUNDLE": "/etc/ssl/ca.pem",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    assert shell["AWS_ACCESS_KEY_ID"] == "shell-key"  # the base is not modified


def test_the_cluster_s_processes_get_that_environment(tmp_path: Path) -> None:
    store = s3_store()
    replicator = Replicator(tmp_path / "p" / "app.db", store, tmp_path / "ls.sock", log_path=tmp_path / "r.log")
    assert replicator.process.env == litestream_environ(store)
    assert replicator.process.argv[1:3] == ["replicate", "-config"]
    follower = Follower("node-2", tmp_path / "n" / "app.db", store, log_path=tmp_path / "f.log")
    assert follower.store is store and follower.intervals == S3_INTERVALS


def test_the_guard_refuses_a_litestream_start_against_the_rule(tmp_path: Path) -> None:
    binary = litestream_binary()
    restore = [binary, "restore", "-f", "-o", "/n/app.db", s3_store().url()]
    assert launch_problems(restore, litestream_environ(s3_store())) == []
    assert launch_problems(restore, None) != []
    no_keys = {k: v for k, v in litestream_environ(s3_store()).items() if not k.startswith("AWS_SECRET")}
    assert launch_problems(restore, no_keys) == ["an s3 store without AWS_SECRET_ACCESS_KEY"]
    with_bundle = {**litestream_environ(s3_store()), "AWS_CA_BUNDLE": "/ca.pem"}
    assert launch_problems(restore, with_bundle) == [f"AWS_CA_BUNDLE is set with the plain-http endpoint {ENDPOINT}"]
    no_flag = {k: v for k, v in litestream_environ(FileStore(tmp_path)).items() if k != "AWS_EC2_METADATA_DISABLED"}
    assert launch_problems([binary, "restore", "-o", "/x", f"file://{tmp_path}"], no_flag) != []
    config = tmp_path / "litestream.yml"
    config.write_text(replicate_config(tmp_path / "app.db", s3_store(endpoint="http://10.0.0.8:9000"), tmp_path / "s"))
    problems = launch_problems([binary, "replicate", "-config", str(config)], litestream_environ(s3_store()))
    assert problems == ["S3 endpoint http://10.0.0.8:9000 is not on loopback"]
    assert launch_problems(["/usr/bin/env"], None) == []


def test_the_guard_is_installed_on_every_process_start(litestream_launches: list[tuple[list[str], list[str]]]) -> None:
    with pytest.raises(AssertionError, match="AWS_EC2_METADATA_DISABLED"):
        subprocess.Popen([litestream_binary(), "version"], env={"PATH": "/usr/bin"})
    assert len(litestream_launches) == 1
    litestream_launches.clear()  # provoked on purpose
    done = subprocess.run([litestream_binary(), "version"], env=litestream_environ(FileStore(Path("/r"))), check=True)
    assert done.returncode == 0 and litestream_launches[0][1] == []
