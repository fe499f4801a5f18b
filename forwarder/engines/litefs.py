"""The LiteFS engine: the position from `<db>-pos`, the primary from `.primary`, `/info` and `/events`.

LiteFS shows its state in two places, and this engine reads both:

- files in the FUSE mount: `<db>-pos` (`%016x/%016x\\n`, txid/checksum, updated at commit) and
  `.primary` (the primary's hostname and a newline; present only on a replica connected to a primary);
- the node API (default `http://localhost:20202`): `GET /info` (`isPrimary`) and `GET /events`, an
  NDJSON stream whose first event is `init`, then one `tx` per transaction and one
  `primaryChange` per change of primary.

The events stream is the main signal, because LiteFS changes its FUSE files from inside the daemon
and inotify does not see that on a real mount. The mount directory is watched with inotify all the
time anyway (it sees every change on a plain directory, such as the fake in
`forwarder.dev.fake_litefs`), the two files are re-read every `POLL_WHILE_DOWN` seconds while the
stream is down, and again after every reconnect, so nothing that happened while disconnected is
lost. Every path goes through the same functions, which publish only increases of the position
and only real changes of the primary.

This module is the engine (lifecycle, position, role); the file formats are in `litefs_files`,
the API and its events stream in `litefs_events`, the inotify watch in `litefs_watch`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx

from ..exceptions import ConfigurationError, EngineError
from ..txid import Txid
from .base import Engine, PrimaryInfo, Role
from .litefs_events import EventsStream, fetch_info
from .litefs_files import PRIMARY_FILE, Unreadable, parse_pos, pos_file, read_pos_text, read_primary
from .litefs_watch import MountWatch

__all__ = ["LiteFSEngine"]

logger = logging.getLogger("forwarder.engines.litefs")

INFO_TIMEOUT = 2.0
"""Seconds to wait for `GET /info` at start; the API is on this machine, so longer means LiteFS is stuck."""

POLL_WHILE_DOWN = 0.05
"""Seconds between re-reads of `-pos` and `.primary` while the events stream is down."""

_MAX_REMEMBERED = 64


class LiteFSEngine(Engine):
    """Replication positions and failover from LiteFS, the replicated SQLite filesystem on Fly.

    `mount` is LiteFS's FUSE directory (`fuse.dir` in litefs.yml, `/litefs` on Fly) and
    `database` the database's file name in it (the app opens `<mount>/<database>`). `api_url`
    is the LiteFS node API (`http.addr`). When the events stream drops, it is reconnected after
    `reconnect_min` seconds, doubling up to `reconnect_max`.

    >>> engine = LiteFSEngine(Path("/litefs"), "db")
    >>> async with engine:
    ...     engine.on_position(tracker.advance)
    ...     engine.primary          # PrimaryInfo(role=Role.REPLICA, primary_id='e784079b449483')
    """

    name = "litefs"

    def __init__(
        self,
        mount: Path,
        database: str = "db",
        *,
        api_url: str = "http://localhost:20202",
        reconnect_min: float = 0.05,
        reconnect_max: float = 2.0,
    ) -> None:
        super().__init__()
        if not database or "/" in database:
            raise ConfigurationError(
                f"the LiteFS database name must be a file name in the mount (LiteFS mounts are flat), got {database!r}"
            )
        if not 0 < reconnect_min <= reconnect_max:
            raise ConfigurationError(
                f"reconnect delays must satisfy 0 < reconnect_min <= reconnect_max, got {reconnect_min} and "
                f"{reconnect_max}"
            )
        try:
            url = httpx.URL(api_url)
        except httpx.InvalidURL as exc:
            raise ConfigurationError(
                f"the LiteFS API URL {api_url!r} is not a URL ({exc}); use http://localhost:20202"
            ) from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(
                "the LiteFS API URL must be http://host:port (LiteFS's `http.addr`, http://localhost:20202 by "
                f"default), got {api_url!r}"
            )
        self.mount = Path(mount)
        self.database = database
        self.database_path = self.mount / database
        self.pos_path = pos_file(self.mount, database)
        self.primary_path = self.mount / PRIMARY_FILE
        self.api_url = api_url.rstrip("/")
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self._position = Txid(0)
        # Until start() asks LiteFS: a node that does not know yet must not take writes.
        self._info = PrimaryInfo(Role.REPLICA, known=False)
        # The last valid content of `.primary`: None when absent, "" when it holds no hostname.
        self._primary_file: str | None = None
        self._client: httpx.AsyncClient | None = None
        self._stream: EventsStream | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watch: MountWatch | None = None
        self._reported: set[str] = set()

    @property
    def position(self) -> Txid:
        return self._position

    @property
    def primary(self) -> PrimaryInfo:
        return self._info

    @property
    def connected(self) -> bool:
        """True while the events stream is connected (its `init` event has arrived)."""
        return self._stream is not None and self._stream.connected

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the position and the role, then follow the events stream and the mount directory."""
        if self._events_task is not None:
            return
        if not self.mount.is_dir():
            logger.warning(
                "the LiteFS mount %s does not exist (yet): is LiteFS running, and is it the `fuse.dir` of "
                "litefs.yml? Position stays 0 and the role comes from the API until it appears",
                self.mount,
            )
        # trust_env=False: the API is on this machine, never to be sent through an HTTP(S)_PROXY.
        self._client = httpx.AsyncClient(base_url=self.api_url, timeout=INFO_TIMEOUT, trust_env=False)
        # Watch first, then read: a change between the two is then seen by the watcher.
        watching = self._start_inotify()
        self._refresh_position()
        primary_file = self._read_primary_file()
        self._primary_file = None if isinstance(primary_file, Unreadable) else primary_file
        if self._primary_file == "":
            self._warn_blank_primary()
        api = await fetch_info(self._client, self.api_url, str(self.primary_path))
        if api is not None:
            # The initial state, not a change: listeners are not called (they read `primary` after start).
            self._info = self._from_api(*api)
        else:
            self._info = self._from_file(self._primary_file)
        if watching and self._watch is not None:
            self._watch_task = asyncio.create_task(self._watch.follow(), name=f"litefs-watch {self.mount}")
        self._stream = EventsStream(
            self._client,
            self.api_url,
            self.database,
            self,
            reconnect_min=self.reconnect_min,
            reconnect_max=self.reconnect_max,
        )
        self._events_task = asyncio.create_task(self._stream.follow(), name=f"litefs-events {self.api_url}")
        logger.info(
            "LiteFS engine started on %s (database %s): %s, position %s",
            self.mount,
            self.database,
            self._describe(self._info),
            self._position,
        )

    async def aclose(self) -> None:
        """Stop following the stream and the directory, and close the API client."""
        tasks = [task for task in (self._events_task, self._watch_task) if task is not None]
        self._events_task = self._watch_task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
            for task in tasks:
                # Retrieve any exception so asyncio does not log "never retrieved" later.
                if not task.cancelled() and task.exception() is not None:
                    logger.error("a LiteFS engine task had failed", exc_info=task.exception())
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._stream = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- primary -----------------------------------------------------------------------------

    async def commit_position(self) -> Txid:
        """The txid in `<db>-pos`, which LiteFS updates when a commit finishes (primary only).

        Raises `EngineError` on a replica, `PositionFormatError` when `-pos` holds garbage and
        `EngineUnavailable` when it cannot be read (LiteFS not running).
        """
        if self._info.role is not Role.PRIMARY:
            raise EngineError(
                "commit_position() is only meaningful on the primary, and this LiteFS node is a replica "
                f"(primary: {self._info.primary_id or 'unknown'}); run the write on the primary, whose "
                "commit position covers it"
            )
        txid = self._read_pos()
        if txid is None:
            # No database yet, so no commit has finished: what is known (0 on a fresh node) covers them all.
            logger.debug("%s does not exist: no commit yet, commit position %s", self.pos_path, self._position)
            return self._position
        self._apply_file_position(txid)
        return txid

    # -- position ----------------------------------------------------------------------------

    def _read_pos(self) -> Txid | None:
        """The txid in `-pos`; None when the file does not exist. Raises EngineError on anything else."""
        text = self._read_pos_text()
        return None if text is None else self._parse_pos(text)

    def _read_pos_text(self) -> str | None:
        return read_pos_text(self.pos_path, self.mount)

    def _parse_pos(self, text: str) -> Txid:
        return parse_pos(text, self.pos_path, self.mount, self.database)

    def _refresh_position(self) -> None:
        """Re-read `-pos` and publish an increase. Never raises: bad content is logged once and ignored."""
        try:
            text = self._read_pos_text()
            if text is None:
                logger.debug(
                    "%s does not exist (LiteFS not ready, or no database yet); position stays %s",
                    self.pos_path,
                    self._position,
                )
                return
            if not text:
                # A writer that does not rename into place is between truncate and write; its
                # CLOSE_WRITE follows.
                logger.debug("%s is empty (being written); position stays %s", self.pos_path, self._position)
                return
            txid = self._parse_pos(text)
        except EngineError as exc:
            self.warn_once(f"pos {exc}", "%s; keeping position %s", exc, self._position)
            return
        self._apply_file_position(txid)

    def _apply_file_position(self, txid: Txid) -> None:
        # The file is authoritative: it is LiteFS's own position at the moment of reading.
        if txid > self._position:
            self._position = txid
            self._publish_position(txid)
        elif txid < self._position:
            # The database was replaced (import, restore, a new primary without our last writes).
            # Listeners hear only about increases (Tracker would ignore a decrease anyway).
            logger.warning("LiteFS position of %s went back from %s to %s", self.database, self._position, txid)
            self._position = txid

    def _advance(self, txid: Txid) -> None:
        if txid > self._position:
            self._position = txid
            self._publish_position(txid)

    # -- role --------------------------------------------------------------------------------

    def _read_primary_file(self) -> str | None | Unreadable:
        """The hostname in `.primary`: None when absent, "" when blank, `Unreadable` (reported once) otherwise."""
        content = read_primary(self.primary_path)
        if isinstance(content, Unreadable):
            self.warn_once(content.key, "%s; keeping %s", content.problem, self._describe(self._info))
        return content

    def _refresh_primary_file(self) -> None:
        """Re-read `.primary`; while the events stream is down, a change of it decides the role."""
        content = self._read_primary_file()
        if isinstance(content, Unreadable) or content == self._primary_file:
            return
        self._primary_file = content
        if content == "":
            self._warn_blank_primary()
        if self.connected:
            return  # the stream is up, and its primaryChange event says the same with no ambiguity
        self._set_primary(self._from_file(content), f"{self.primary_path.name} changed")

    def _from_file(self, content: str | None) -> PrimaryInfo:
        if content is not None:
            return PrimaryInfo(Role.REPLICA, content or None, known=bool(content))
        logger.warning(
            "%s is absent and the LiteFS API does not answer: assuming this node is the primary, as LiteFS "
            'documents ("If the file does not exist, the request should attempt to write locally"); the '
            "events stream corrects this once %s answers",
            self.primary_path,
            self.api_url,
        )
        return PrimaryInfo(Role.PRIMARY)

    def _from_api(self, is_primary: bool, hostname: str) -> PrimaryInfo:
        if is_primary:
            return PrimaryInfo(Role.PRIMARY, hostname or None)
        primary = hostname or self._primary_file or None
        return PrimaryInfo(Role.REPLICA, primary, known=primary is not None)

    def _set_primary(self, info: PrimaryInfo, why: str) -> None:
        if info == self._info:
            return
        logger.warning("LiteFS role changed (%s): %s, was %s", why, self._describe(info), self._describe(self._info))
        self._info = info
        self._publish_primary(info)

    @staticmethod
    def _describe(info: PrimaryInfo) -> str:
        if info.role is Role.PRIMARY:
            return "primary"
        return f"replica of {info.primary_id}" if info.primary_id else "replica with no known primary"

    def _warn_blank_primary(self) -> None:
        self.warn_once(
            "primary blank",
            "%s holds no hostname: this node is a replica whose primary is unknown, so writes cannot be "
            "forwarded by instance (with a static lease, set lease.hostname to the primary's on every node)",
            self.primary_path,
        )

    # -- the events stream (forwarder.engines.litefs_events calls these) -------------------------

    def event_init(self, is_primary: bool, hostname: str) -> None:
        """The stream is subscribed: what changed while it was down is in the files now, and
        everything later comes as events. Reading them here loses nothing in between."""
        self._refresh_position()
        self.event_primary(is_primary, hostname, "LiteFS init event")

    def event_tx(self, txid: Txid) -> None:
        """A transaction of this database."""
        self._advance(txid)

    def event_primary(self, is_primary: bool, hostname: str, why: str = "LiteFS primaryChange event") -> None:
        """A change of primary (or the state at `init`)."""
        self._refresh_primary_file()
        self._set_primary(self._from_api(is_primary, hostname), why)

    async def wait_while_down(self, delay: float) -> None:
        """Wait before the stream reconnects (see `_pause`)."""
        await self._pause(delay)

    async def _pause(self, delay: float) -> None:
        """Sleep `delay` seconds, re-reading the files meanwhile: the stream is down, so they are all we have."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (remaining := deadline - loop.time()) > 0:
            await asyncio.sleep(min(remaining, POLL_WHILE_DOWN))
            self._guarded(self._refresh_files)

    # -- the file watcher --------------------------------------------------------------------

    def _refresh_files(self) -> None:
        self._refresh_position()
        self._refresh_primary_file()

    def _start_inotify(self) -> bool:
        watch = MountWatch(
            mount=self.mount,
            pos_name=self.pos_path.name,
            primary_name=self.primary_path.name,
            on_pos=lambda: self._guarded(self._refresh_position),
            on_primary=lambda: self._guarded(self._refresh_primary_file),
            on_lost=lambda: self._guarded(self._refresh_files),
        )
        if not watch.start():
            return False
        self._watch = watch
        return True

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _guarded(function: Any, *args: Any) -> None:
        # Whatever goes wrong with one event or file, the watcher and the stream, which every
        # waiter depends on, keep running.
        try:
            function(*args)
        except Exception:
            logger.exception("unexpected error while following LiteFS")

    def warn_once(self, key: str, message: str, *args: Any) -> None:
        """Log a warning once per distinct `key`: a file stuck on garbage is re-read on every event and poll."""
        if key in self._reported:
            return
        if len(self._reported) >= _MAX_REMEMBERED:
            self._reported.clear()
        self._reported.add(key)
        logger.warning(message, *args)
