"""The local cluster the write benchmarks run on: `bench/apps/write_app.py` on a primary and two replicas."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from bench.servers import REPO, process_cpu_seconds
from forwarder.dev import Cluster
from forwarder.engines.litestream_config import Intervals


@asynccontextmanager
async def local_cluster(
    replicas: int = 2, env: Mapping[str, str] | None = None, intervals: Intervals | None = None
) -> AsyncIterator[Cluster]:
    """Start uvicorn + Litestream nodes on loopback (no edge: clients talk to nodes), stop them after."""
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(
            app="bench.apps.write_app:app",
            data_dir=Path(tmp),
            replicas=replicas,
            edge=False,
            app_dir=REPO,
            env=env,
            intervals=intervals,
        )
        await cluster.start()
        try:
            yield cluster
        finally:
            await cluster.stop()


T = TypeVar("T")


async def on_cluster(cluster: Cluster | None, measure: Callable[[Cluster], Awaitable[T]]) -> T:
    """Run `measure` on `cluster`, or on a local cluster started for it and stopped after."""
    if cluster is not None:
        return await measure(cluster)
    async with local_cluster() as started:
        return await measure(started)


def cpu_seconds(cluster: Cluster) -> dict[str, dict[int, float]]:
    """User + system CPU seconds so far of every cluster process, by group and then pid (Linux /proc)."""
    groups: dict[str, list[int | None]] = {
        "primary app": [cluster.primary.pid],
        "primary litestream": [cluster.replicator.process.pid],
        "replica apps": [node.pid for node in cluster.replicas],
        "replica followers": [
            node.follower.process.pid if node.follower and node.follower.process else None for node in cluster.replicas
        ],
    }
    out: dict[str, dict[int, float]] = {}
    for group, pids in groups.items():
        out[group] = {}
        for pid in pids:
            seconds = process_cpu_seconds(pid) if pid is not None else None
            if pid is not None and seconds is not None:
                out[group][pid] = seconds
    return out


def cpu_used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds each group used between two `cpu_seconds()` readings (processes in both only)."""
    return {
        group: sum(after[group][pid] - before[group][pid] for pid in after[group] if pid in before.get(group, {}))
        for group in after
    }


def pause_cluster(cluster: Cluster, pause: bool) -> None:
    """SIGSTOP (or SIGCONT) every app and Litestream process of `cluster`, its followers through their
    supervisors (so the watchdog does not take a paused follower for a stalled one): an idle
    cluster's pollers load a 2-core machine enough to skew what another cluster measures."""
    replicator = cluster.replicator.process
    pids = [cluster.primary.pid, replicator.pid if replicator else None, *(node.pid for node in cluster.replicas)]
    for pid in pids:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP if pause else signal.SIGCONT)
    for node in cluster.replicas:
        (cluster.pause_follower if pause else cluster.resume_follower)(node.id)
