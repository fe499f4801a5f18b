"""Prometheus metrics (optional: `pip install 'forwarder[metrics]'`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import Forwarder

__all__ = ["Metrics", "MetricsUnavailable"]

_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricsUnavailable(RuntimeError):
    """prometheus-client is not installed."""


class Metrics:
    """One node's counters and histograms, in a registry of its own (several nodes can share a process).

    Recording is a no-op when prometheus-client is missing; only `/_forwarder/metrics` says so.
    """

    def __init__(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder
        try:
            import prometheus_client as prom
        except ImportError:
            self._prom: Any = None
            return
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self._forwarded = prom.Counter(
            "forwarder_forwarded_requests",
            "Requests sent to the primary, by mode and reason",
            ["mode", "reason"],
            registry=r,
        )
        self._waits = prom.Histogram(
            "forwarder_replication_wait_seconds",
            "Time waiting for the local replica to reach a txid",
            ["cause"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self._timeouts = prom.Counter(
            "forwarder_replication_wait_timeouts", "Waits for the local replica that timed out", ["cause"], registry=r
        )
        self._rpc = prom.Histogram(
            "forwarder_rpc_seconds",
            "Latency of @primary_only calls to the primary, replication wait included",
            ["function", "outcome"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        txid = prom.Gauge("forwarder_txid", "Replication position of this node (txid as a number)", registry=r)
        txid.set_function(lambda: float(forwarder.tracker.position))
        lag = prom.Gauge("forwarder_lag_seconds", "How long this replica has been behind the primary", registry=r)
        lag.set_function(forwarder.lag)
        waiting = prom.Gauge("forwarder_waiters", "Coroutines waiting for the local replica", registry=r)
        waiting.set_function(lambda: float(forwarder.tracker.waiting))
        primary = prom.Gauge("forwarder_is_primary", "1 on the primary, 0 on a replica", registry=r)
        primary.set_function(lambda: 1.0 if forwarder.is_primary else 0.0)

    @property
    def available(self) -> bool:
        return self._prom is not None

    def forwarded(self, mode: str, reason: str) -> None:
        if self._prom is not None:
            self._forwarded.labels(mode, reason).inc()

    def waited(self, cause: str, seconds: float, *, timed_out: bool = False) -> None:
        if self._prom is not None:
            self._waits.labels(cause).observe(seconds)
            if timed_out:
                self._timeouts.labels(cause).inc()

    def rpc(self, function: str, outcome: str, seconds: float) -> None:
        if self._prom is not None:
            self._rpc.labels(function, outcome).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type; `MetricsUnavailable` without prometheus-client."""
        if self._prom is None:
            raise MetricsUnavailable(
                "metrics need prometheus-client: pip install 'forwarder[metrics]' (or prometheus-client)"
            )
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
