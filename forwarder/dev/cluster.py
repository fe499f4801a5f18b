"""A whole cluster on loopback: one primary and N replicas, each a uvicorn process, on real Litestream."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from ..engines.litestream_config import Intervals, recommended_intervals
from ..store import FileStore, Store
from .edge import Edge, EdgeNode, serve_edge
from .processes import ClusterError, ManagedProcess, fast_server_options, free_port
from .replication import Follower, Replicator
from .watchdog import Watchdog

__all__ = ["DEFAULT_REGIONS", "Cluster", "NodeProcess"]

logger = logging.getLogger("forwarder.dev.cluster")

DEFAULT_REGIONS = ("fra", "ams", "syd", "iad", "gru", "nrt", "sin", "lhr")
"""The primary takes the first region; replicas cycle through the others."""

HEALTH_DEADLINE = 30.0
"""Seconds a node's app gets to answer `GET /_forwarder/health` with 200."""


@dataclass
class NodeProcess:
    """One node of the local cluster: its app process and, on a replica, its Litestream follower."""

    id: str
    region: str
    role: Literal["primary", "replica"]
    port: int
    url: str
    database: Path
    app: ManagedProcess | None = field(default=None, repr=False)
    follower: Follower | None = field(default=None, repr=False)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)

    @property
    def pid(self) -> int | None:
        """The app process id while it runs."""
        return self.app.pid if self.app is not None and self.app.running else None


class Cluster:
    """Run `app` (an ASGI "module:attribute") as a primary and `replicas` read replicas on loopback.

    Every node is its own uvicorn process with its own database file; the primary's database is
    replicated by `litestream replicate` into `store` (default: the directory `<data_dir>/replica`;
    or an `S3Store`, the off-Fly production topology), and each replica follows it with
    `litestream restore -f`. `intervals` defaults to the store's recommended ones. Process output
    goes to `<data_dir>/logs/<name>.log`.

    >>> cluster = Cluster(app="example_app.main:app", data_dir=Path("/tmp/cluster"), replicas=2)
    >>> await cluster.start()
    >>> cluster.nodes[1].url
    'http://127.0.0.1:40123'
    >>> await cluster.stop()
    """

    def __init__(
        self,
        app: str,
        data_dir: Path,
        replicas: int = 2,
        host: str = "127.0.0.1",
        regions: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        base_port: int = 0,
        app_dir: Path | None = None,
        edge: bool = True,
        edge_port: int = 0,
        latency: Mapping[str, float] | None = None,
        fly_app: str | None = None,
        store: Store | None = None,
        intervals: Intervals | None = None,
    ) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be 0 or more, got {replicas}")
        self.app = app
        self.fly_app = fly_app
        """When set, nodes get Machine-like ids and Fly's own variables (FLY_MACHINE_ID, FLY_REGION,
        PRIMARY_REGION, FLY_APP_NAME) instead of FORWARDER_NODE_ID/REGION/PRIMARY_REGION, as on Fly."""
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.env = dict(env or {})
        self.app_dir = app_dir
        self.secret = os.environ.get("FORWARDER_SECRET") or secrets.token_hex(32)
        self.store: Store = store if store is not None else FileStore(self.data_dir / "replica")
        """Where `replicate` writes and every follower restores from."""
        self.intervals = intervals or recommended_intervals(self.store)
        self.logs_dir = self.data_dir / "logs"
        self.nodes = self._plan(replicas, list(regions or DEFAULT_REGIONS), base_port)
        primary = self.nodes[0]
        self.socket_path = primary.database.parent / "litestream.sock"
        self.replicator = Replicator(
            primary.database,
            self.store,
            self.socket_path,
            log_path=self.logs_dir / "node-1-litestream.log",
            intervals=self.intervals,
        )
        self._watchdog: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._with_edge = edge
        self._edge_port = edge_port
        self.latency = dict(latency or {})
        self._edge_stack: contextlib.AsyncExitStack | None = None
        self.edge_url: str | None = None
        """URL of the edge (the Fly proxy emulator) in front of every node, once started."""

    def _plan(self, replicas: int, regions: list[str], base_port: int) -> list[NodeProcess]:
        if not regions:
            raise ValueError("regions must name at least one region")
        # 0.0.0.0 / :: listen everywhere; clients still connect over loopback.
        url_host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(self.host, self.host)
        replica_regions = itertools.cycle(regions[1:] or regions)
        nodes = []
        for index in range(replicas + 1):
            # On Fly a node is known by its 14-hex-digit Machine id.
            node_id = secrets.token_hex(7) if self.fly_app else f"node-{index + 1}"
            port = base_port + index if base_port else free_port()
            nodes.append(
                NodeProcess(
                    id=node_id,
                    region=regions[0] if index == 0 else next(replica_regions),
                    role="primary" if index == 0 else "replica",
                    port=port,
                    url=f"http://{url_host}:{port}",
                    database=self.data_dir / node_id / "app.db",
                )
            )
        return nodes

    @property
    def primary(self) -> NodeProcess:
        """The primary node."""
        return self.nodes[0]

    @property
    def replicas(self) -> list[NodeProcess]:
        """The replica nodes."""
        return self.nodes[1:]

    def node(self, node_id: str) -> NodeProcess:
        """The node named `node_id`."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"no node {node_id!r} in this cluster; nodes are {', '.join(n.id for n in self.nodes)}")

    # -- whole cluster --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start replication, every follower and every app; return once every node is healthy.

        On any failure (or cancellation) everything started so far is stopped before the error propagates.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self._http = httpx.AsyncClient(timeout=2.0)
        try:
            await self.replicator.start()
            await asyncio.gather(self._start_app(self.primary), *(self._start_follower(n) for n in self.replicas))
            await asyncio.gather(*(self._start_app(n) for n in self.replicas))
            await asyncio.gather(*(self._wait_healthy(n) for n in self.nodes))
            if self._with_edge:
                await self._start_edge()
            self.write_state()
            watchdog = Watchdog(self.replicas)
            self._watchdog = asyncio.create_task(watchdog.run(), name="forwarder-dev-watchdog")
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every process: the apps first, then the followers, then `replicate`. Safe to call twice."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        if self._edge_stack is not None:
            stack, self._edge_stack = self._edge_stack, None
            await stack.aclose()
            self.edge_url = None
        await asyncio.gather(*(n.app.stop() for n in self.nodes if n.app is not None))
        await asyncio.gather(*(n.follower.stop() for n in self.nodes if n.follower is not None))
        await self.replicator.stop()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def write_state(self) -> Path:
        """Write `<data_dir>/cluster.json` (secret, nodes with pids, store URL) and return its path."""
        state = {
            "secret": self.secret,
            "nodes": [
                {
                    "id": n.id,
                    "region": n.region,
                    "role": n.role,
                    "url": n.url,
                    "database": str(n.database),
                    "pid": n.pid,
                }
                for n in self.nodes
            ],
            "store": self.store.url(),
            "edge": self.edge_url,
        }
        path = self.data_dir / "cluster.json"
        tmp = path.with_suffix(".json.tmp")
        # It holds the secret: readable by this user only.
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(path)
        return path

    async def _start_edge(self) -> None:
        """Put the edge (a Fly proxy emulator) in front of every node, on one port."""
        edge = Edge([EdgeNode(n.id, n.region, n.url) for n in self.nodes], latency=self.latency)
        stack = contextlib.AsyncExitStack()
        try:
            self.edge_url = await stack.enter_async_context(serve_edge(edge, self.host, self._edge_port))
        except BaseException:
            await stack.aclose()
            raise
        self._edge_stack = stack

    # -- one node -------------------------------------------------------------------------------

    async def stop_node(self, node_id: str) -> None:
        """Stop a node's app (replication keeps running), e.g. to test an unreachable primary."""
        node = self.node(node_id)
        async with node.lock:
            if node.app is not None:
                await node.app.stop()
        self.write_state()

    async def start_node(self, node_id: str) -> None:
        """Start a stopped node's app again, on the same port, and wait until it is healthy."""
        node = self.node(node_id)
        async with node.lock:
            if node.app is None or not node.app.running:
                await self._start_app(node)
                await self._wait_healthy(node)
        self.write_state()

    async def restart_node(self, node_id: str) -> None:
        """Restart a node. A replica also gets a fresh follower (wiped and restored again)."""
        node = self.node(node_id)
        if node.follower is None:
            await self.stop_node(node_id)
            await self.start_node(node_id)
            return
        async with node.lock:
            if node.app is not None:
                await node.app.stop()
            await node.follower.stop()
            await node.follower.start()
            await self._start_app(node)
            await self._wait_healthy(node)
        self.write_state()

    def pause_follower(self, node_id: str) -> None:
        """Freeze a replica's follower, so its position stops advancing (a lagging replica)."""
        follower = self.node(node_id).follower
        if follower is None:
            raise ValueError(f"{node_id} is the primary; it has no follower to pause")
        follower.pause()

    def resume_follower(self, node_id: str) -> None:
        """Let a paused follower continue (the watchdog restores it if it cannot catch up)."""
        follower = self.node(node_id).follower
        if follower is not None:
            follower.resume()

    def app_env(self, node_id: str) -> dict[str, str]:
        """The environment node `node_id`'s app starts with (what `forwarder dev` checks first)."""
        return self._app_env(self.node(node_id))

    def _app_env(self, node: NodeProcess) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("FORWARDER_PRIMARY_URL", None)  # from the shell it would turn the primary into a replica
        if self.fly_app:
            env.update(
                FLY_MACHINE_ID=node.id,
                FLY_REGION=node.region,
                PRIMARY_REGION=self.primary.region,
                FLY_APP_NAME=self.fly_app,
            )
        else:
            env.update(
                FORWARDER_NODE_ID=node.id, FORWARDER_REGION=node.region, FORWARDER_PRIMARY_REGION=self.primary.region
            )
        env.update(
            PYTHONUNBUFFERED="1",
            FORWARDER_ROLE=node.role,
            FORWARDER_ENGINE="litestream",
            FORWARDER_DATABASE=str(node.database),
            FORWARDER_LITESTREAM_SOCKET=str(self.socket_path),
            FORWARDER_SECRET=self.secret,
            FORWARDER_PORT=str(node.port),
            FORWARDER_PRIMARY_ID=self.primary.id,
        )
        if node.role == "replica":
            env["FORWARDER_PRIMARY_URL"] = self.primary.url
        env.update(self.env)
        return env

    async def _start_app(self, node: NodeProcess) -> None:
        argv = [sys.executable, "-m", "uvicorn", self.app, "--host", self.host, "--port", str(node.port)]
        argv.append("--no-access-log")
        argv += fast_server_options(self._app_env(node))
        if self.app_dir is not None:
            argv += ["--app-dir", str(self.app_dir)]
        node.app = ManagedProcess(node.id, argv, log_path=self.logs_dir / f"{node.id}.log", env=self._app_env(node))
        await node.app.start()

    async def _start_follower(self, node: NodeProcess) -> None:
        node.database.parent.mkdir(parents=True, exist_ok=True)
        node.follower = Follower(
            node.id,
            node.database,
            self.store,
            log_path=self.logs_dir / f"{node.id}-litestream.log",
            intervals=self.intervals,
            primary=self.replicator.txid,
        )
        await node.follower.start()

    async def _wait_healthy(self, node: NodeProcess) -> None:
        assert node.app is not None and self._http is not None
        url = f"{node.url}/_forwarder/health"
        deadline = time.monotonic() + HEALTH_DEADLINE
        last = "no answer yet"
        while True:
            if not node.app.running:
                raise ClusterError(
                    f"{node.id}: the app exited with status {node.app.returncode} before it was healthy "
                    f"(log {node.app.log_path}):\n{node.app.tail()}"
                )
            try:
                response = await self._http.get(url)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{node.id}: GET {url} did not answer 200 within {HEALTH_DEADLINE:g}s (last: {last}); "
                    f"does the app mount forwarder? Log {node.app.log_path}:\n{node.app.tail()}"
                )
            await asyncio.sleep(0.05)
