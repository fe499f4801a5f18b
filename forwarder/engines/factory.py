"""Build the replication engine the settings name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exceptions import ConfigurationError
from .base import Engine, Role

if TYPE_CHECKING:
    from ..settings import ForwarderSettings

__all__ = ["engine_from"]


def engine_from(settings: ForwarderSettings) -> Engine:
    """The engine `FORWARDER_ENGINE` names, built from the settings (imported only when chosen)."""
    if settings.engine == "litestream":
        from .litestream import LitestreamEngine

        role = Role(settings.resolved_role or "primary")
        return LitestreamEngine(
            settings.database, role, socket_path=settings.socket_path, primary_id=settings.primary_id
        )
    if settings.engine == "litefs":
        from .litefs import LiteFSEngine

        # The app opens <mount>/<db>; LiteFS keeps <db>-pos and .primary beside it.
        return LiteFSEngine(settings.database.parent, settings.database.name, api_url=settings.litefs_api)
    raise ConfigurationError(
        "FORWARDER_ENGINE=memory is for tests in one process: build MemoryEngine yourself and pass engine="
    )
