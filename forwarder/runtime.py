"""`Forwarder`: one node's engine, tracker, topology, database and connection to the primary."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from types import TracebackType
from typing import Any

import httpx

from . import context
from ._http import node_transport, primary_client
from .channel.transport import ChannelTransport, signed_handshake
from .database import Database
from .engines.base import Engine, PrimaryInfo, Role
from .engines.factory import engine_from
from .exceptions import ConfigurationError, ForwarderError, ReplicationTimeout
from .lag import LagMeter
from .logs import LogLevel, install_default_handler
from .metrics import Metrics
from .policy import RoutingPolicy
from .rpc.client import RPCClient
from .rpc.registry import Registry, RemoteFunction, default_registry
from .rpc.seen import SeenCalls, seen_calls_for
from .rpc.signing import SignatureVerifier
from .security import SecurityPolicy
from .settings import ForwarderSettings
from .topology import Topology
from .tracker import Tracker
from .txid import Txid

__all__ = ["Forwarder"]

logger = logging.getLogger("forwarder")


class _State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


class Forwarder:
    """Everything one node needs to act as part of a single-node-looking app.

    Build it from the environment with `Forwarder.from_settings()`, wrap the app with
    `ForwarderMiddleware(app, forwarder=forwarder)` (which starts and stops it in the app's
    lifespan), and decorate write functions with `@primary_only`.

    ```python
    forwarder = Forwarder.from_settings()
    app = ForwarderMiddleware(Starlette(routes=routes), forwarder=forwarder)
    ```

    Parameters (all keyword-only; `from_settings` fills them from `FORWARDER_*`):
    `engine` the replication engine; `topology` this node and the primary; `secret` the shared
    RPC secret (required on replicas); `registry` of `@primary_only` functions; `database` path
    of the SQLite file; the timeouts in seconds; `transport` an httpx transport for the
    connection to the primary (tests pass `httpx.ASGITransport(app=primary_app)`); `node_channel`
    False sends each forward and RPC call as its own HTTP request instead of over the one websocket
    to the primary (`forwarder.channel`).
    """

    def __init__(
        self,
        *,
        engine: Engine,
        topology: Topology,
        secret: str | None = None,
        registry: Registry | None = None,
        database: str | None = None,
        rpc_timeout: float = 5.0,
        forward_timeout: float = 30.0,
        connect_timeout: float = 2.0,
        replication_timeout: float = 5.0,
        replica_busy_timeout: float = 0.1,
        signature_max_age: float = 60.0,
        policy: RoutingPolicy | None = None,
        max_lag: float = 30.0,
        lag_probe_interval: float = 0.0,
        transport: httpx.AsyncBaseTransport | None = None,
        log_level: LogLevel | None = None,
        security: SecurityPolicy | None = None,
        node_channel: bool = True,
    ) -> None:
        if topology.role is Role.REPLICA and not secret:
            raise ConfigurationError(
                "FORWARDER_SECRET is not set: a replica signs its calls to the primary with it; "
                "set the same random value on every node"
            )
        self.engine = engine
        self.topology = topology
        self.registry = registry or default_registry
        self.tracker = Tracker()
        self.rpc_timeout = rpc_timeout
        self.forward_timeout = forward_timeout
        self.connect_timeout = connect_timeout
        self.replication_timeout = replication_timeout
        self.replica_busy_timeout = replica_busy_timeout
        """Busy timeout (seconds) of replica connections: past it a read is served by the primary."""
        self.policy = policy or RoutingPolicy()
        self.max_lag = max_lag
        self.lag_probe_interval = lag_probe_interval
        self.lag_meter = LagMeter()
        self.log_level = log_level
        self.startup_problem: str | None = None
        """Set when the app's own start-up failed after the server was already serving."""
        self.metrics = Metrics(self)
        self._probe: asyncio.Task[None] | None = None
        self._secret = (secret or "").encode()
        self._transport = transport
        self._verifier = SignatureVerifier(self._secret, max_age=signature_max_age) if secret else None
        self.database = (
            Database(database, is_primary=lambda: self.is_primary, replica_busy_timeout=replica_busy_timeout)
            if database
            else None
        )
        self.security = security or SecurityPolicy()
        self.node_channel = node_channel
        """Send forwarded requests and RPC calls over one websocket to the primary (`forwarder.channel`)."""
        self.signature_max_age = signature_max_age
        # RPC request ids already executed: in the replicated database, so restarts and failovers keep them.
        self.seen_calls: SeenCalls = seen_calls_for(self.database)
        self._client: httpx.AsyncClient | None = None
        self._channel: ChannelTransport | None = None
        self._rpc: RPCClient | None = None
        self._retired: list[httpx.AsyncClient] = []  # pools to former primaries
        self._state = _State.UNOPENED
        engine.on_position(self.tracker.advance)
        engine.on_primary_change(self._follow_primary)

    @classmethod
    def from_settings(
        cls,
        settings: ForwarderSettings | None = None,
        *,
        engine: Engine | None = None,
        registry: Registry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Forwarder:
        """Build a node from `ForwarderSettings` (read from the environment when not given)."""
        settings = settings or ForwarderSettings.load()
        role = settings.resolved_role
        if engine is None:
            engine = engine_from(settings)
        if role is None:
            # Decided once the engine has started (LiteFS asks /info); until then, take no writes.
            role = "replica"
        return cls(
            engine=engine,
            topology=settings.topology(Role(role)),
            secret=settings.secret.get_secret_value() if settings.secret else None,
            registry=registry,
            database=str(settings.database),
            rpc_timeout=settings.rpc_timeout,
            forward_timeout=settings.forward_timeout,
            connect_timeout=settings.connect_timeout,
            replication_timeout=settings.replication_timeout,
            replica_busy_timeout=settings.replica_busy_timeout,
            signature_max_age=settings.signature_max_age,
            policy=settings.routing_policy(),
            max_lag=settings.max_lag,
            lag_probe_interval=settings.lag_probe_interval,
            transport=transport,
            log_level=settings.log_level,
            security=settings.security_policy(),
            node_channel=settings.node_channel,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the engine, prepare the database and open the connection pool to the primary."""
        if self._state is not _State.UNOPENED:
            raise RuntimeError("a Forwarder can be started only once; create a new one")
        self._state = _State.OPENED
        if self.log_level is not None:
            install_default_handler(self.log_level)
        await self.engine.start()
        self.tracker.reset(self.engine.position)
        self._follow_primary(self.engine.primary)
        if self.database is not None:
            self.database.initialize()
        context._running.append(self)
        if self.lag_probe_interval > 0:
            self._probe = asyncio.create_task(self._probe_primary(), name="forwarder-lag-probe")
        logger.info(
            "forwarder node %s (%s) started as %s on %s, position %s",
            self.topology.node_id,
            self.topology.region,
            self.topology.role.value,
            self.engine.name,
            self.tracker.position,
        )

    async def aclose(self) -> None:
        """Close the connection pool and stop the engine."""
        if self._state is not _State.OPENED:
            return
        self._state = _State.CLOSED
        if self in context._running:
            context._running.remove(self)
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        for client in [*self._retired, *([self._client] if self._client is not None else [])]:
            await client.aclose()
        self._retired.clear()
        if self.database is not None:
            self.database.close()
        await self.engine.aclose()

    async def __aenter__(self) -> Forwarder:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @contextmanager
    def activate(self) -> Iterator[Forwarder]:
        """Make `@primary_only` calls in this block use this forwarder (when several run in one process)."""
        token = context._current.set(self)
        try:
            yield self
        finally:
            context._current.reset(token)

    # -- state -------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True between `start()` and `aclose()`."""
        return self._state is _State.OPENED

    @property
    def is_primary(self) -> bool:
        return self.topology.is_primary

    @property
    def node_secret(self) -> bytes | None:
        """The cluster secret that signs node headers and RPC calls (None when not set)."""
        return self._secret or None

    @property
    def signature_verifier(self) -> SignatureVerifier:
        if self._verifier is None:
            raise ConfigurationError(
                "this node has no FORWARDER_SECRET, so it cannot check RPC signatures; "
                "set the same FORWARDER_SECRET on every node"
            )
        return self._verifier

    @property
    def client(self) -> httpx.AsyncClient:
        """The keep-alive connection pool to the primary (rebuilt when the primary changes)."""
        if self._client is None:
            url = self.topology.primary_url
            if not url:
                raise ConfigurationError(
                    f"node {self.topology.node_id} does not know the primary's URL; set FORWARDER_PRIMARY_URL "
                    "(or FLY_APP_NAME on Fly, so it can be derived from the primary's machine id)"
                )
            channel = self.node_channel and bool(self._secret)
            transport = self._transport or node_transport(
                partial(signed_handshake, self._secret, self.topology.node_id) if channel else None
            )
            self._channel = transport if isinstance(transport, ChannelTransport) else None
            self._client = primary_client(
                url, timeout=httpx.Timeout(self.forward_timeout, connect=self.connect_timeout), transport=transport
            )
            # The RPC client shares the pool, so it is rebuilt with it.
            self._rpc = RPCClient(self._client, self._secret, timeout=self.rpc_timeout, channel=self._channel)
        return self._client

    @property
    def channel(self) -> ChannelTransport | None:
        """The node channel under `client`, on which the proxy sends whole bodies itself; None when
        forwarding goes over HTTP only (no secret, `node_channel=False`, a test's transport)."""
        self.client  # noqa: B018 - builds the pool, and the channel with it, when needed
        return self._channel

    @property
    def rpc(self) -> RPCClient:
        """Calls `@primary_only` functions on the primary, over the same pool as `client`."""
        self.client  # noqa: B018 - builds the pool, and the RPC client with it, when needed
        assert self._rpc is not None
        return self._rpc

    def _follow_primary(self, info: PrimaryInfo) -> None:
        before = (self.topology.role, self.topology.primary_url)
        self.topology.follow(info)
        if (self.topology.role, self.topology.primary_url) != before:
            logger.warning(
                "primary changed: this node is %s, primary %s at %s",
                self.topology.role.value,
                self.topology.primary_id,
                self.topology.primary_url,
            )
            if self._client is not None and self.topology.primary_url != before[1]:
                # Requests in flight finish on the old pool; it is closed with the forwarder.
                self._retired.append(self._client)
                self._client = self._rpc = self._channel = None

    # -- operations --------------------------------------------------------------------------

    async def commit_position(self, *, prompt: bool = False) -> Txid:
        """On the primary: a txid covering every commit finished before this call.

        `prompt=True` when no replica waits on the answer right now (a write made on the primary
        itself, or replayed to it): the engine may then answer at once with a txid that comes to
        exist a little later (`Engine.promise_position`); a replica that forwarded the write and
        waits for the txid gets one that exists as soon as it can (`Engine.commit_position`).
        """
        txid = await (self.engine.promise_position() if prompt else self.engine.commit_position())
        self.tracker.advance(txid)
        return txid

    async def live_position(self) -> Txid:
        """This node's position as the engine has it now.

        On the primary, the tracker only moves when a request asks for a commit position, so writes
        made outside requests (start-up DDL, a cron job, another process) would stay invisible;
        this asks the engine (Litestream: `GET /txid`, no sync forced) and advances the tracker.
        """
        if self.is_primary:
            try:
                self.tracker.advance(await self.engine.read_position())
            except ForwarderError as exc:
                logger.debug("could not read the engine's position: %s", exc)
        return self.tracker.position

    async def wait_for(self, txid: Txid, timeout: float | None = None, *, cause: str = "write") -> Txid:
        """Wait until this node's replica holds `txid` (default timeout: `replication_timeout`).

        `txid` is known to be committed on the primary, so it also feeds the lag measurement.
        `cause` labels the wait in the metrics (`write`, `rpc`, `cookie`).
        """
        if cause != "cookie":
            self.lag_meter.observe(txid, self.tracker.position)
        started = time.perf_counter()
        try:
            position = await self.tracker.wait_for(txid, self.replication_timeout if timeout is None else timeout)
        except ReplicationTimeout:
            self.metrics.waited(cause, time.perf_counter() - started, timed_out=True)
            raise
        self.metrics.waited(cause, time.perf_counter() - started)
        return position

    def lag(self) -> float:
        """Seconds this replica has been behind a txid known to be on the primary (0 on the primary)."""
        return 0.0 if self.is_primary else self.lag_meter.lag(self.tracker.position)

    async def _probe_primary(self) -> None:
        """On a replica, learn the primary's txid now and then, so lag is measured even when idle."""
        while True:
            await asyncio.sleep(self.lag_probe_interval)
            if self.is_primary or not self.topology.primary_url:
                continue
            try:
                response = await self.client.get("/_forwarder/health", timeout=self.connect_timeout)
                txid = Txid.parse(response.json()["txid"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError, ForwarderError) as exc:
                logger.debug("lag probe of the primary failed: %s", exc)
                continue
            self.lag_meter.observe(txid, self.tracker.position)

    async def call(self, function: RemoteFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a registered function on the primary and wait until this replica holds its writes."""
        if self.is_primary:
            return await function.invoke(args, kwargs)
        started = time.perf_counter()
        outcome = "error"
        try:
            payload = function.encode_arguments(args, kwargs)
            data, txid = await self.rpc.call(function.name, payload)
            result = function.decode_result(data)
            if txid is None:  # ran, but the primary could not learn its txid (logged by the client)
                outcome = "stale"
                context.note_stale()
                return result
            context.note_write(txid)  # committed: the response of the request being served says so
            try:
                await self.wait_for(txid, cause="rpc")
            except ReplicationTimeout as exc:
                outcome = "lagging"
                raise exc.with_result(result) from None
            outcome = "ok"
            return result
        finally:
            self.metrics.rpc(function.name, outcome, time.perf_counter() - started)
