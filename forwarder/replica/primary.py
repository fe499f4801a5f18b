"""Where a replica supervisor learns the primary's txid, to tell a stalled follower from an idle one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx

from ..exceptions import EngineUnavailable, InvalidTxid, PositionFormatError
from ..store import Store
from ..txid import Txid
from .store_files import ltx_files

__all__ = ["HealthPosition", "PrimaryPosition", "StorePosition", "callable_position"]

HEALTH_TIMEOUT = 2.0
"""Seconds to wait for the primary's `/_forwarder/health`."""


class PrimaryPosition(Protocol):
    """The primary's current txid; raises `EngineUnavailable` when it cannot be known now."""

    async def __call__(self) -> Txid: ...


class HealthPosition:
    """The `txid` of the primary's `GET /_forwarder/health` (served on the private network)."""

    def __init__(self, primary_url: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = primary_url.rstrip("/") + "/_forwarder/health"
        self._client = httpx.AsyncClient(timeout=HEALTH_TIMEOUT, transport=transport)

    async def __call__(self) -> Txid:
        try:
            response = await self._client.get(self.url)
            body = response.json()  # 503 (unhealthy) still reports the position
        except (httpx.HTTPError, ValueError) as exc:
            raise EngineUnavailable(f"cannot read the primary's position from {self.url}: {exc}") from None
        try:
            return Txid.parse(str(body["txid"]))
        except (KeyError, TypeError, InvalidTxid) as exc:
            raise PositionFormatError(f"{self.url} answered without a valid txid ({exc}): {body!r:.200}") from None

    async def aclose(self) -> None:
        await self._client.aclose()


class StorePosition:
    """The highest txid in the store's LTX files (`litestream ltx -json`), for replicas that
    cannot reach the primary's health endpoint. It lags by up to one sync interval."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def __call__(self) -> Txid:
        return _highest_txid(await ltx_files(self.store))


def _highest_txid(files: list[dict[str, Any]]) -> Txid:
    try:
        values = [int(str(f["max_txid"]), 16) if isinstance(f["max_txid"], str) else int(f["max_txid"]) for f in files]
        return Txid(max(values, default=0))
    except (ValueError, TypeError, KeyError, InvalidTxid) as exc:
        raise PositionFormatError(f"cannot read the txids in `litestream ltx -json` output ({exc})") from None


def callable_position(source: Callable[[], Awaitable[Txid]]) -> PrimaryPosition:
    """Any coroutine function that returns the primary's txid (the local cluster's control socket)."""

    async def position() -> Txid:
        return await source()

    return position
