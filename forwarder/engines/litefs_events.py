"""LiteFS's node API as the engine follows it: `GET /info` once, and the `GET /events` NDJSON stream
(`init`, then one `tx` per transaction and one `primaryChange` per change of primary), reconnected
with a doubling delay whenever it drops. Each event becomes a call on a `Listener` (the engine)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from ..exceptions import InvalidTxid
from ..txid import Txid

__all__ = ["CONNECT_TIMEOUT", "EventsStream", "Listener", "fetch_info"]

logger = logging.getLogger("forwarder.engines.litefs")

CONNECT_TIMEOUT = 2.0
"""Seconds to wait for the events stream to connect (reading it has no timeout: it can be quiet for hours)."""


class Listener(Protocol):
    """What the stream tells, and what it asks of the engine while it is down."""

    def event_init(self, is_primary: bool, hostname: str) -> None:
        """The stream is subscribed (its first event): re-read what may have changed while it was down."""

    def event_tx(self, txid: Txid) -> None:
        """A transaction of the followed database."""

    def event_primary(self, is_primary: bool, hostname: str) -> None:
        """A `primaryChange` event."""

    async def wait_while_down(self, delay: float) -> None:
        """Wait `delay` seconds before reconnecting (the engine re-reads its files meanwhile)."""

    def warn_once(self, key: str, message: str, *args: Any) -> None:
        """Log a warning once per distinct `key`."""


async def fetch_info(client: httpx.AsyncClient, api_url: str, fallback: str) -> tuple[bool, str] | None:
    """`isPrimary` and the primary's hostname from `GET /info`; None when the API cannot tell.

    `fallback` names what decides the role instead, for the log line.
    """
    try:
        response = await client.get("/info")
    except httpx.HTTPError as exc:
        logger.warning(
            "cannot reach the LiteFS API at %s (%s: %s); deciding the role from %s until it answers",
            api_url,
            type(exc).__name__,
            exc,
            fallback,
        )
        return None
    try:
        data = response.json() if response.status_code == 200 else None
    except ValueError:
        data = None
    primary = data.get("primary") if isinstance(data, dict) else None
    is_primary = data.get("isPrimary", False) if isinstance(data, dict) else None
    hostname = primary.get("hostname", "") if isinstance(primary, dict) else ""
    if not isinstance(is_primary, bool) or not isinstance(hostname, str):
        logger.warning(
            "GET %s/info answered %s %r, not LiteFS's node info; is api_url the LiteFS `http.addr`? Deciding "
            "the role from %s",
            api_url,
            response.status_code,
            response.text[:200],
            fallback,
        )
        return None
    return is_primary, hostname


@dataclass
class EventsStream:
    """Follows `/events` of the API behind `client` for `database`, forever (cancel the task to stop)."""

    client: httpx.AsyncClient
    api_url: str
    database: str
    listener: Listener
    reconnect_min: float = field(kw_only=True)
    reconnect_max: float = field(kw_only=True)
    connected: bool = field(default=False, init=False)
    """True from the stream's `init` event until it drops."""

    async def follow(self) -> None:
        """Read the stream, reconnecting after `reconnect_min` seconds, doubling up to `reconnect_max`."""
        delay = self.reconnect_min
        while True:
            reason = await self._read()
            if self.connected:
                self.connected = False
                delay = self.reconnect_min
                logger.warning(
                    "LiteFS events stream from %s lost (%s); reading files until it is back", self.api_url, reason
                )
            else:
                self.listener.warn_once(
                    "events down",
                    "cannot follow LiteFS events at %s/events (%s); reading files and retrying",
                    self.api_url,
                    reason,
                )
                logger.debug("LiteFS events stream unavailable (%s); retrying in %gs", reason, delay)
            await self.listener.wait_while_down(delay)
            delay = min(delay * 2, self.reconnect_max)

    async def _read(self) -> str:
        """Follow one connection to `/events` until it ends; returns why it ended."""
        try:
            timeout = httpx.Timeout(CONNECT_TIMEOUT, read=None)
            async with self.client.stream("GET", "/events", timeout=timeout) as response:
                if response.status_code != 200:
                    return f"GET /events answered {response.status_code}"
                async for line in response.aiter_lines():
                    if line.strip():
                        self._guarded_handle(line)
            return "the server ended the stream"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    def _guarded_handle(self, line: str) -> None:
        # Whatever goes wrong with one event, the stream, which every waiter depends on, keeps running.
        try:
            self.handle(line)
        except Exception:
            logger.exception("unexpected error while following LiteFS")

    def handle(self, line: str) -> None:
        """Turn one line of the stream into a call on the listener (malformed lines are logged once)."""
        try:
            event = json.loads(line)
        except ValueError:
            self.listener.warn_once(f"event {line}", "ignoring a LiteFS event that is not JSON: %r", line[:200])
            return
        if not isinstance(event, dict):
            self.listener.warn_once(
                f"event {line}", "ignoring a LiteFS event that is not a JSON object: %r", line[:200]
            )
            return
        kind, data = event.get("type"), event.get("data")
        if kind == "tx":
            if event.get("db") == self.database:
                self._on_tx(data, line)
        elif kind in ("init", "primaryChange"):
            self._on_primary_event(kind, data, line)
        else:
            logger.debug("ignoring LiteFS event of type %r", kind)

    def _on_tx(self, data: Any, line: str) -> None:
        text = data.get("txID") if isinstance(data, dict) else None
        try:
            if not isinstance(text, str):
                raise InvalidTxid(f"txID is {text!r}")
            txid = Txid.parse(text)
        except InvalidTxid as exc:
            self.listener.warn_once(
                f"event {line}", "ignoring a LiteFS tx event without a valid txID (%s): %r", exc, line[:200]
            )
            return
        self.listener.event_tx(txid)

    def _on_primary_event(self, kind: str, data: Any, line: str) -> None:
        # Go omits false and empty fields, so a missing isPrimary means false and a missing hostname "".
        is_primary = data.get("isPrimary", False) if isinstance(data, dict) else None
        hostname = data.get("hostname", "") if isinstance(data, dict) else None
        if not isinstance(is_primary, bool) or not isinstance(hostname, str):
            self.listener.warn_once(f"event {line}", "ignoring a malformed LiteFS %s event: %r", kind, line[:200])
            return
        if kind == "init":
            self.connected = True
            logger.info("following LiteFS events at %s/events", self.api_url)
            self.listener.event_init(is_primary, hostname)
        else:
            self.listener.event_primary(is_primary, hostname)
