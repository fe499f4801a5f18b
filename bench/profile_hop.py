"""Where a forwarded write's time goes: py-spy on the replica and the primary while writes are forwarded.

Sends `writes` proxied writes one after another (the latency scenario) to a replica of the local
cluster while `py-spy record --gil` samples the replica's and the primary's uvicorn processes, then
sums the samples by package of the innermost frame (self time). Also reports each process's CPU
per write from /proc, and the same for the baseline proxy (`bench/apps/bare_proxy.py`) relaying
the same writes, so forwarder's share is visible next to what any uvicorn + httpx hop costs.

The collapsed stacks are kept in `bench/results/profile-<process>.raw` (open them with speedscope
or flamegraph.pl); they are not committed.

    .venv/bin/python -m bench.profile_hop [--writes 400]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import httpx

from bench.local_cluster import on_cluster
from bench.servers import process_cpu_seconds, uvicorn_server
from bench.stats import RESULTS, report
from forwarder.dev import Cluster

RATE = 1000
"""py-spy samples per second."""

PACKAGES = ("forwarder", "httpx", "httpcore", "h11", "uvicorn", "starlette", "anyio", "asyncio", "sqlite3", "bench")


def package_of(frame: str) -> str:
    """The package a py-spy frame ("function (path:line)") belongs to; stdlib modules by file name."""
    match = re.search(r"\((.*?)(?::\d+)?\)$", frame)
    path = match.group(1) if match else frame
    for name in PACKAGES:
        if f"/{name}/" in f"/{path}" or path.startswith(f"{name}/"):
            return name
    if "threading" in path or "queue.py" in path or "concurrent/" in path:
        return "threads (to_thread handoff)"
    if "selectors.py" in path or "socket.py" in path:
        return "asyncio"
    return "other"


def self_time_by_package(raw: Path) -> tuple[int, dict[str, int]]:
    """Total samples and samples by package of the innermost frame."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack:
            continue
        samples = int(number)
        total += samples
        counts[package_of(stack.split(";")[-1])] += samples
    return total, dict(counts)


def cpu_seconds(pid: int) -> float:
    seconds = process_cpu_seconds(pid)
    if seconds is None:
        raise RuntimeError(f"process {pid} exited during the profile")
    return seconds


async def send_writes(url: str, writes: int) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for i in range(writes):
            response = await client.post(f"{url}/write", content=f"profiled {i}")
            assert response.status_code == 201, response.text


async def profiled(pids: dict[str, int], url: str, writes: int) -> dict[str, dict[str, Any]]:
    """Send the writes while py-spy samples each process; CPU per write and self time by package."""
    spies = {
        name: await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(RATE),
            "--gil",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(RESULTS / f"profile-{name}.raw"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for name, pid in pids.items()
    }
    await asyncio.sleep(1.0)  # py-spy attaches (no readiness signal; it only delays the start of sampling)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    await send_writes(url, writes)
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    out: dict[str, dict[str, Any]] = {}
    for name, spy in spies.items():
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        _, err = await spy.communicate()
        raw = RESULTS / f"profile-{name}.raw"
        if spy.returncode not in (0, -signal.SIGINT) or not raw.exists():
            raise RuntimeError(f"py-spy on {name} failed (exit {spy.returncode}): {err.decode()[-2000:]}")
        total, by_package = self_time_by_package(raw)
        out[name] = {
            "cpu_ms_per_write": round(1000 * (after[name] - before[name]) / writes, 3),
            "samples": total,
            "self_by_package": by_package,
        }
    return out


async def measure(cluster: Cluster, writes: int) -> dict[str, Any]:
    replica = cluster.replicas[0]
    assert replica.pid is not None and cluster.primary.pid is not None
    await send_writes(replica.url, 50)  # warm up
    forwarded = await profiled({"replica": replica.pid, "primary": cluster.primary.pid}, replica.url, writes)
    with uvicorn_server(
        "bench.apps.bare_proxy:app", {"BENCH_UPSTREAM": cluster.primary.url}, "/", like_nodes=True
    ) as bare_url:
        await send_writes(bare_url, 50)
        port = int(bare_url.rsplit(":", 1)[1])
        bare_pid = _listening_pid(port)
        bare = await profiled({"bare-proxy": bare_pid}, bare_url, writes)
    return {"writes": writes, "rate": RATE, "processes": {**forwarded, **bare}}


def _listening_pid(port: int) -> int:
    """The pid of the process that listens on `port` (the bare proxy's uvicorn), from /proc."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
            inode = fields[9]
            break
    if inode is None:
        raise RuntimeError(f"nothing listens on port {port}")
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if fd.readlink() == Path(f"socket:[{inode}]"):
                    return int(fd_dir.parent.name)
        except (PermissionError, FileNotFoundError):
            continue
    raise RuntimeError(f"no process holds the socket listening on port {port}")


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per process: CPU per write, then each package's share of the samples."""
    out = []
    for name, process in result["processes"].items():
        total = process["samples"] or 1
        shares = sorted(process["self_by_package"].items(), key=lambda item: -item[1])
        out.append(
            {
                "process": name,
                "CPU ms/write": process["cpu_ms_per_write"],
                "where the samples are (self time by package)": ", ".join(
                    f"{package} {100 * count / total:.0f}%" for package, count in shares if count * 50 >= total
                ),
            }
        )
    return out


COLUMNS = ["process", "CPU ms/write", "where the samples are (self time by package)"]


async def run(writes: int, cluster: Cluster | None = None) -> dict[str, Any]:
    if shutil.which("py-spy", path=str(Path(sys.executable).parent)) is None:
        raise SystemExit("the profile needs py-spy in the venv: scripts/install installs it")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = await on_cluster(cluster, lambda on: measure(on, writes))
    result["rows"] = rows(result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="profile the forward hop with py-spy")
    parser.add_argument("--writes", type=int, default=400)
    args = parser.parse_args()
    result = asyncio.run(run(args.writes))
    report("profile_hop", result, result["rows"], COLUMNS)
