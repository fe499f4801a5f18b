"""Local development tools: a whole cluster on loopback (`forwarder dev`), with the real Litestream engine."""

from __future__ import annotations

from .cluster import DEFAULT_REGIONS, Cluster, NodeProcess
from .processes import ClusterError

__all__ = ["DEFAULT_REGIONS", "Cluster", "ClusterError", "NodeProcess"]
