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
    primary_url_template: str | None = None
    """How to reach a primary known by id, e.g. `http://{id}.internal:8080`. On Fly (an app name and
    no template) it is `http://{id}.vm.{app}.internal:{port}`."""

    @property
    def is_primary(self) -> bool:
        return self.role is Role.PRIMARY

    def follow(self, info: PrimaryInfo) -> None:
        """Adopt what the engine says about the primary (a failover, a reconnect).

        An engine that knows no primary id (static topology) changes only the role. A replica
        whose engine reports the primary as unknown forgets the old one, so nothing is sent to
        a primary that is gone: forwarding answers 503 until a new one is known.
        """
        self.role = info.role
        if info.role is Role.PRIMARY:
            self.primary_id = self.node_id
            return
        if info.primary_id is None:
            if info.known is False:
                self.primary_id = None
                self.primary_url = None
            return
        if info.primary_id != self.primary_id or self.primary_url is None:
            self.primary_url = self.url_for(info.primary_id) or self.primary_url
        self.primary_id = info.primary_id

    def url_for(self, node_id: str) -> str | None:
        """The internal URL of node `node_id`, when a template (or Fly's naming) says how to build it."""
        if self.primary_url_template:
            return self.primary_url_template.format(id=node_id, app=self.app_name or "", port=self.port)
        if self.app_name:
            return f"http://{node_id}.vm.{self.app_name}.internal:{self.port}"
        return None

    def replay_target(self) -> str | None:
        """How to name the primary in a `fly-replay` header, or None if it is not known."""
        if self.primary_id:
            return f"instance={self.primary_id}"
        if self.primary_region:
            return f"region={self.primary_region}"
        return None
