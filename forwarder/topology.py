"""Where this node is and where the primary is."""

from __future__ import annotations

from dataclasses import dataclass

from .engines.base import PrimaryInfo, Role

__all__ = ["Topology"]


@dataclass
class Topology:
    """This node's id and region, and the primary's id, region and internal URL.

    Static settings fill it at start-up; an engine that knows better (LiteFS `.primary`, its
    events) updates it through `follow()` when the primary changes.
    """

    node_id: str
    region: str
    role: Role
    primary_url: str | None = None
    primary_id: str | None = None
    primary_region: str | None = None
    app_name: str | None = None
    port: int = 8080

    @property
    def is_primary(self) -> bool:
        return self.role is Role.PRIMARY

    def follow(self, info: PrimaryInfo) -> None:
        """Adopt what the engine says about the primary (a failover, a reconnect)."""
        self.role = info.role
        if info.role is Role.PRIMARY:
            self.primary_id = self.node_id
        elif info.primary_id:
            if info.primary_id != self.primary_id and self.app_name:
                self.primary_url = f"http://{info.primary_id}.vm.{self.app_name}.internal:{self.port}"
            self.primary_id = info.primary_id

    def replay_target(self) -> str | None:
        """How to name the primary in a `fly-replay` header, or None if it is not known."""
        if self.primary_id:
            return f"instance={self.primary_id}"
        if self.primary_region:
            return f"region={self.primary_region}"
        return None
