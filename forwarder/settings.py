"""Settings, read once from the environment (`FORWARDER_*`, and Fly's own variables)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .engines.base import Role
from .exceptions import ConfigurationError
from .policy import CookiePolicy, RoutingPolicy
from .security import SecurityPolicy
from .settings_errors import settings_problems
from .topology import Topology

CommaList = Annotated[tuple[str, ...], NoDecode]

__all__ = ["ForwarderSettings"]


def _env(name: str, *fly_names: str) -> Any:
    return AliasChoices(f"FORWARDER_{name.upper()}", name, *fly_names)


class ForwarderSettings(BaseSettings):
    """Every setting of a forwarder node. Each field is read from `FORWARDER_<NAME>`; a few also
    from the variables Fly.io sets on its machines (`FLY_MACHINE_ID`, `FLY_REGION`,
    `PRIMARY_REGION`, `FLY_APP_NAME`), the `FORWARDER_` one winning.

    Priority, highest first: arguments to the constructor, environment variables, defaults.
    Build it once at start-up with `ForwarderSettings.load()`, which turns validation errors into a
    `ConfigurationError` naming the variable and the fix.
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    node_id: str = Field(default_factory=socket.gethostname, validation_alias=_env("node_id", "FLY_MACHINE_ID"))
    """This node's id (on Fly: the machine id). Appears in `Forwarder-Node` and `fly-replay: instance=`."""
    region: str = Field("local", validation_alias=_env("region", "FLY_REGION"))
    """This node's region."""
    primary_region: str | None = Field(None, validation_alias=_env("primary_region", "PRIMARY_REGION"))
    """The primary's region (on Fly: `primary_region` of fly.toml)."""
    app_name: str | None = Field(None, validation_alias=_env("app_name", "FLY_APP_NAME"))
    """The Fly app name, used to build internal URLs `http://<id>.vm.<app>.internal:<port>`."""
    role: Literal["auto", "primary", "replica"] = Field("auto", validation_alias=_env("role"))
    """`primary`, `replica`, or `auto`: the engine decides (Litestream: replica when a primary URL is set)."""
    primary_url: str | None = Field(None, validation_alias=_env("primary_url"))
    """The primary's internal base URL, e.g. `http://10.0.0.2:8080`. Required on a Litestream replica."""
    primary_id: str | None = Field(None, validation_alias=_env("primary_id"))
    """The primary's node id, when known statically."""
    engine: Literal["litestream", "litefs", "memory"] = Field("litestream", validation_alias=_env("engine"))
    """The replication engine under the database."""
    database: Path = Field(Path("data/app.db"), validation_alias=_env("database"))
    """Path of this node's SQLite database file."""
    secret: SecretStr | None = Field(None, validation_alias=_env("secret"))
    """Shared secret that signs RPC calls between nodes. Required on replicas; the same on every node."""
    litefs_api: str = Field("http://localhost:20202", validation_alias=_env("litefs_api"))
    """LiteFS's HTTP API (its `/events` stream tells position changes and failovers)."""
    primary_url_template: str | None = Field(None, validation_alias=_env("primary_url_template"))
    """How to reach a primary known by id (LiteFS failover off Fly), e.g. `http://{id}:8080`."""
    litestream_socket: Path | None = Field(None, validation_alias=_env("litestream_socket"))
    """Litestream's control socket on the primary (default: `<database dir>/litestream.sock`)."""
    port: int = Field(8080, validation_alias=_env("port"))
    """The port this node's app listens on (used to build internal URLs)."""
    rpc_timeout: float = Field(5.0, gt=0, validation_alias=_env("rpc_timeout"))
    """Seconds to wait for the primary's reply to an RPC call."""
    forward_timeout: float = Field(30.0, gt=0, validation_alias=_env("forward_timeout"))
    """Seconds to wait for the primary's response to a forwarded request."""
    connect_timeout: float = Field(2.0, gt=0, validation_alias=_env("connect_timeout"))
    """Seconds to wait for a connection to the primary before answering 503."""
    replication_timeout: float = Field(5.0, gt=0, validation_alias=_env("replication_timeout"))
    """Seconds a replica waits for its own copy to reach a write's txid."""
    replica_busy_timeout: float = Field(0.1, gt=0, le=60, validation_alias=_env("replica_busy_timeout"))
    """Seconds a replica's read waits for SQLite's lock (held by the follower while it applies a batch)
    before the read is served by the primary instead."""
    signature_max_age: float = Field(60.0, gt=0, validation_alias=_env("signature_max_age"))
    """Seconds an RPC signature stays valid (allowed clock skew between nodes)."""
    mode: Literal["auto", "proxy", "replay"] = Field("auto", validation_alias=_env("mode"))
    """How writes reach the primary: `proxy`, `replay` (fly-replay), or `auto` (replay behind Fly for small bodies)."""
    read_methods: CommaList = Field(("GET", "HEAD", "OPTIONS"), validation_alias=_env("read_methods"))
    """Comma-separated methods served locally on a replica; every other method is a write."""
    passthrough: CommaList = Field((), validation_alias=_env("passthrough"))
    """Comma-separated path globs served where they land, never forwarded (e.g. `/static/*`)."""
    always_forward: CommaList = Field((), validation_alias=_env("always_forward"))
    """Comma-separated path globs always run on the primary, whatever the method."""
    on_lag: Literal["forward", "error", "stale"] = Field("forward", validation_alias=_env("on_lag"))
    """What a replica does with a read it cannot make consistent in time: forward it, 504, or serve stale."""
    cookie_name: str = Field("__txid", min_length=1, validation_alias=_env("cookie_name"))
    """Name of the read-your-writes cookie (the LiteFS proxy's name by default)."""
    cookie_max_age: int = Field(300, ge=1, validation_alias=_env("cookie_max_age"))
    """Seconds the cookie lives."""
    cookie_secure: bool | None = Field(None, validation_alias=_env("cookie_secure"))
    """Add `Secure`: true, false, or unset to add it on https requests only."""
    cookie_same_site: Literal["lax", "strict", "none"] = Field("lax", validation_alias=_env("cookie_same_site"))
    """The cookie's SameSite attribute."""
    replay_timeout: str | None = Field(None, pattern=r"^\d+(ms|s)$", validation_alias=_env("replay_timeout"))
    """`timeout` field of fly-replay, e.g. `5s` or `800ms`."""
    replay_fallback: Literal["prefer_self", "force_self", "none"] = Field(
        "prefer_self", validation_alias=_env("replay_fallback")
    )
    """`fallback` field of fly-replay: where Fly delivers a replay that could not reach the primary
    (back to this node, which proxies it and answers 503 with Retry-After if the primary is down); `none` omits it."""
    max_lag: float = Field(30.0, gt=0, validation_alias=_env("max_lag"))
    """Seconds of replica lag after which `/_forwarder/health` answers 503."""
    lag_probe_interval: float = Field(1.0, ge=0, validation_alias=_env("lag_probe_interval"))
    """Seconds between a replica's probes of the primary's txid (for lag); 0 turns probing off."""
    log_level: Literal["debug", "info", "warning", "error", "off"] = Field("info", validation_alias=_env("log_level"))
    """Level of forwarder's own log lines when the app has not configured logging; `off` keeps only errors."""
    public_health: bool = Field(False, validation_alias=_env("public_health"))
    """Serve `/_forwarder/health` to requests through the public proxy (metrics and RPC never are)."""
    rpc_max_body: int = Field(1024 * 1024, ge=1, validation_alias=_env("rpc_max_body"))
    """Bytes an RPC call's body may have; larger calls get 413 before anything runs."""
    buffer_body: int = Field(64 * 1024, ge=0, validation_alias=_env("buffer_body"))
    """Bytes of a forwarded body read in full before a connection to the primary is taken."""
    body_timeout: float = Field(10.0, gt=0, validation_alias=_env("body_timeout"))
    """Seconds a client may leave its request body idle before a forward is cut off with 408."""
    max_streamed_uploads: int = Field(64, ge=1, validation_alias=_env("max_streamed_uploads"))
    """Forwarded bodies larger than FORWARDER_BUFFER_BODY streamed to the primary at once (pool: 256)."""
    node_channel: bool = Field(True, validation_alias=_env("node_channel"))
    """Send forwarded requests and RPC calls over one websocket to the primary; false: HTTP only."""

    @field_validator("read_methods", "passthrough", "always_forward", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("read_methods")
    @classmethod
    def _upper(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(method.upper() for method in value)

    def routing_policy(self) -> RoutingPolicy:
        """The middleware's policy from these settings."""
        return RoutingPolicy(
            mode=self.mode,
            read_methods=frozenset(self.read_methods),
            passthrough=self.passthrough,
            always_forward=self.always_forward,
            on_lag=self.on_lag,
            cookie=CookiePolicy(
                name=self.cookie_name,
                max_age=self.cookie_max_age,
                secure=self.cookie_secure,
                same_site=self.cookie_same_site,
            ),
            replay_timeout=self.replay_timeout,
            replay_fallback=None if self.replay_fallback == "none" else self.replay_fallback,
        )

    def topology(self, role: Role) -> Topology:
        """This node's place in the cluster from these settings, as `role` (the resolved one, or the
        replica's until the engine says)."""
        return Topology(
            node_id=self.node_id,
            region=self.region,
            role=role,
            primary_url=self.primary_url,
            primary_id=self.primary_id or (self.node_id if role is Role.PRIMARY else None),
            primary_region=self.primary_region,
            app_name=self.app_name,
            port=self.port,
            primary_url_template=self.primary_url_template,
        )

    def security_policy(self) -> SecurityPolicy:
        """The node's security limits from these settings."""
        return SecurityPolicy(
            public_health=self.public_health,
            rpc_max_body=self.rpc_max_body,
            buffer_body=self.buffer_body,
            body_timeout=self.body_timeout,
            max_streamed_uploads=self.max_streamed_uploads,
        )

    @field_validator("primary_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL like http://10.0.0.2:8080")
        return value

    @property
    def resolved_role(self) -> Literal["primary", "replica"] | None:
        """The role when the settings decide it; None when only the engine can (LiteFS)."""
        if self.role != "auto":
            return self.role
        if self.engine == "litestream":
            return "replica" if self.primary_url else "primary"
        return None

    @property
    def socket_path(self) -> Path:
        """Litestream's control socket path."""
        return self.litestream_socket or self.database.parent / "litestream.sock"

    @classmethod
    def load(cls, **overrides: Any) -> ForwarderSettings:
        """Read the settings from the environment, with `overrides` taking priority.

        Raises `ConfigurationError` that names the variable and what is expected.
        """
        try:
            settings = cls(**overrides)
        except ValidationError as exc:
            raise ConfigurationError(settings_problems(exc, cls)) from None
        problems = settings.problems()
        if problems:
            raise ConfigurationError("; ".join(problems))
        return settings

    def problems(self) -> list[str]:
        """What these settings lack for the node they describe (a missing secret or primary URL), one line each."""
        found: list[str] = []
        has_secret = self.secret is not None and bool(self.secret.get_secret_value())
        if self.engine == "litefs" and not has_secret:
            found.append(
                "FORWARDER_SECRET is not set: with LiteFS any node can become a replica after a failover and "
                "must then sign its calls to the primary. Set the same random value on every node, "
                "e.g. `fly secrets set FORWARDER_SECRET=$(openssl rand -hex 32)`"
            )
        elif self.resolved_role == "replica" and not has_secret:
            found.append(
                "FORWARDER_SECRET is not set: a replica signs its calls to the primary with it. "
                "Set the same random value on every node, "
                "e.g. `fly secrets set FORWARDER_SECRET=$(openssl rand -hex 32)`"
            )
        if self.resolved_role == "replica" and self.engine == "litestream" and not self.primary_url:
            found.append(
                "FORWARDER_PRIMARY_URL is not set: a Litestream replica must know where the primary is "
                "(e.g. http://10.0.0.2:8080)"
            )
        return found
