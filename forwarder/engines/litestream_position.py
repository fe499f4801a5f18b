"""A txid that covers the latest commit on a Litestream primary, without forcing a sync.

`POST /sync` (what `LitestreamEngine` asked after every write) makes Litestream turn the WAL into
an LTX file right now: 3-8 ms, most of a direct write's latency. Litestream's own monitor does the
same every `monitor-interval` (10 ms in the dev cluster) anyway, so the primary can instead work
out which txid *will* hold its commit and answer at once, or wait for that sync's file.

Two local facts, read in this order after the commit, decide most answers:

1. the WAL's committed end: SQLite's wal-index header (`<db>-shm`: salts and `mxFrame`), so
   `end = 32 + mxFrame * (page size + 24)` covers every commit finished so far, ours included;
2. the newest local L0 LTX file (`.<db>-litestream/ltx/0/<min>-<max>.ltx`, say txid N): its
   header says which WAL (salts) and which byte range of it N holds. If that reaches `end`, the
   answer is N, which exists.

Both are read on the event loop, for every write, so with few system calls: the wal-index is kept
open (`ShmFile`: a `stat`, then a `pread`), and the newest LTX is found by name from the last one
seen (`NewestL0`: two `access` calls) and its header read once per txid.

Otherwise the commit is in frames no LTX held when we looked, and there are two answers:

- **prompt** (`promise()`, for writes no replica is waiting on right now): `N + 2`, from the files
  alone. It covers the commit: Litestream writes L0 txids one at a time, each from a WAL read
  that starts after the previous txid's file is renamed (one executor semaphore), and reads
  from where the previous txid ended to the WAL's end (a monitor sync up to 64 MiB; we claim
  nothing past `MAX_PENDING_WAL`). N + 1 was not renamed when we looked, after our commit; so
  either it holds the commit, or the read of N + 2 starts after our commit, at N + 1's end, which
  is before our frames, and takes them (a snapshot, after a WAL restart, takes everything). It
  exists if N + 1 did not hold the commit (the frames are still pending, the next sync takes them);
  if N + 1 did and nothing is written after, Litestream has nothing more to sync, and the keeper
  (`litestream_keeper`) writes one row so that it does.
- **exact** (`txid()`, for writes a replica waits on right now: proxied writes, RPC): the first
  L0 file that holds the commit, waited for. Our frames are in the WAL and in no LTX, so
  Litestream's monitor syncs them within an interval; each file as it lands (`ltx_arrivals`: one
  inotify watch on `ltx/0` for every waiter) says by its header whether it reaches our end. The
  first that does (`N + 1`, or `N + 2` when the sync that made `N + 1` read the WAL before our
  commit) is the answer, and it exists. Up to `LTX_WAIT`, then `POST /sync`.

  The primary's answer comes later than the sync-status this used to ask (`N + 1` at once when no
  sync was active), but the replica cannot hold the write before that file exists anyway: it waits
  less by as much. What goes is a control-socket request for every one or two forwarded writes
  under load, which cost Litestream and the primary's app more CPU than anything else a
  forwarded write added there (README, Performance: the forwarded-write figures).

`promise_after_status()`, what a quiet primary uses for its prompt answer, asks sync-status once
without waiting: `N + 1` if no sync is active, else `N + 2`; so a read with the cookie soon after a
lone write waits for the first txid that holds it (and the keeper has nothing to write).

It does not also ask Litestream to sync at once (a background `POST /sync`, wait=false), though
that would get the txid to a waiting replica up to a monitor interval sooner: measured on the
primary, it cut direct-write throughput to that of `POST /sync` per write (83/243/451 against
250/422/578 writes/s at 1/8/32 connections, `bench/primary_cost.py`-style A/B, load average 10),
because back-to-back syncs keep a sync active, and callers then wait it out.

Anything unexpected (WAL restarted, salts differ, no file within `LTX_WAIT`, an unknown header, more
than `MAX_PENDING_WAL` bytes not yet synced, which a size-limited sync might split) answers None,
and the caller falls back to `POST /sync`. Litestream source checked: v0.5.16 `db.go` (`sync`:
the WAL read in `pageMap`, then the `.tmp` file renamed; every sync and checkpoint runs between
`beginSyncDiag` and `finishSyncDiag`, under the one executor semaphore; a checkpoint syncs the WAL
before it and snapshots after a restart).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..exceptions import EngineError
from .litestream_files import LtxHead, NewestL0, ShmFile, WalEnd, read_head
from .ltx_arrivals import LtxArrivals

__all__ = ["LTX_WAIT", "MAX_PENDING_WAL", "CoveringCheck"]

MAX_PENDING_WAL = 1 << 20
"""Bytes of WAL not yet in an LTX above which "the next txid holds it" is not claimed (Litestream
0.5 caps one sync at 64 MiB; a smaller bound stays far from that edge)."""

LTX_WAIT = 0.25
"""Seconds the exact answer waits for the LTX file that holds the commit, then `POST /sync`. Litestream
syncs every monitor interval (10 ms as forwarder configures it), a sync took over 20 ms at times on a
loaded 2-core machine: a file not there by then means Litestream is stuck, stopped, or set to a
long interval of its own, and `POST /sync` then either makes the file or says what is wrong.
Short, because with Litestream dead every forwarded write waits this out before it is answered."""

_ACTIVE = "a sync stayed active"


class CoveringCheck:
    """The decision of this module's docstring, for one database (see `LitestreamEngine`)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.ltx_dir = database.with_name(f".{database.name}-litestream") / "ltx" / "0"
        self._sent = self._answered = 0  # status requests sent, and the latest one answered
        self._reply: dict[str, Any] = {}
        self._in_flight: asyncio.Future[None] | None = None
        self._newest = NewestL0(self.ltx_dir)  # from the newest seen: where the next look starts
        self._shm = ShmFile(database)
        self.outcomes: Counter[str] = Counter()  # how each call was answered (benchmarks, debugging)
        self._arrivals = LtxArrivals(self._newest_txid, self.ltx_dir)

    async def txid(self) -> tuple[int, bool] | None:
        """A txid that holds every commit finished before this call and exists, with False (never a
        promise, unlike `promise()`), or None (then `POST /sync`): from the L0 files as they land."""
        found = self._look()
        if found is None or isinstance(found, int):
            return None if found is None else (found, False)
        end, head = found
        if end.end - head.end > MAX_PENDING_WAL:
            self.outcomes["too much WAL pending"] += 1
            return None
        candidate = head.txid + 1
        while await self._arrivals.reached(candidate, LTX_WAIT):
            # An LTX file never changes once in place: the head of the newest, if that is it, is its head.
            known = self._newest.head
            written = known if known is not None and known.txid == candidate else read_head(self.ltx_dir, candidate)
            if written is None or written.salts != end.salts:
                self.outcomes["the WAL started over"] += 1  # or the file went: POST /sync decides
                return None
            if written.end >= end.end:
                self.outcomes["the next LTX" if candidate == head.txid + 1 else "a later LTX"] += 1
                return candidate, False
            candidate += 1  # that sync read the WAL before our commit: the next one takes it
        self.outcomes["no LTX came"] += 1
        return None

    async def _status_answer(
        self, request: Callable[..., Awaitable[dict[str, Any]]], end: WalEnd
    ) -> tuple[int | None, str] | None:
        """`after_status(end, ...)` of one sync-status; None (and counted) when the control socket failed."""
        try:
            status = await self._status(request)
        except EngineError:
            self.outcomes["sync-status failed"] += 1
            return None
        return self.after_status(end, status)

    async def promise_after_status(self, request: Callable[..., Awaitable[dict[str, Any]]]) -> tuple[int, bool] | None:
        """Like `promise()`, with one `GET /debug/sync-status` and no waiting when the newest does not hold the end.

        No sync active: `newest + 1`, which exists soon without the keeper (our frames are in no LTX
        yet); a sync active (or a status that does not say): `promise()` again, so `newest + 2`.
        """
        found = self.covered()
        if found is None or found[1].end >= found[0].end:
            return self.promise()
        answer = await self._status_answer(request, found[0])
        if answer is None:
            return None
        txid, outcome = answer
        if outcome == _ACTIVE:
            return self.promise()
        self.outcomes[outcome] += 1
        return None if txid is None else (txid, False)

    async def _status(self, request: Callable[..., Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """`GET /debug/sync-status`, shared by concurrent callers.

        A caller may use only a reply to a request sent after it arrived (one sent before may
        predate its commit), so it waits for the one in flight to end, then joins or sends the next.
        """
        wanted = self._sent + 1  # the first request sent from now on
        while self._answered < wanted:
            if self._in_flight is not None:
                await asyncio.wait([self._in_flight])  # whatever its fate, then look again
                continue
            self._sent += 1
            sent = self._sent
            self._in_flight = done = asyncio.get_running_loop().create_future()
            try:
                reply = await request("GET", "/debug/sync-status", params={"path": str(self.database)})
                if sent > self._answered:
                    self._answered, self._reply = sent, reply
            finally:
                self._in_flight = None
                done.set_result(None)
        return self._reply

    @property
    def status_requests(self) -> int:
        """`GET /debug/sync-status` requests sent so far (benchmarks, debugging)."""
        return self._sent

    def state(self) -> tuple[WalEnd | None, LtxHead | None]:
        """The WAL's committed end and the newest L0 LTX, read in that order (either None if not trusted).

        In that order because a commit finished before the call is then in the end read, and an LTX
        that a sync finishes in between only makes the head newer (safe for every use here).
        """
        end = self._shm.wal_end()
        return end, self._newest()

    async def aclose(self) -> None:
        """Stop the shared look at L0 and close the wal-index file kept open (the next look opens it again)."""
        await self._arrivals.aclose()
        self.close()

    def close(self) -> None:
        """Close the wal-index file kept open (the next look opens it again)."""
        self._shm.close()

    def _look(self) -> int | tuple[WalEnd, LtxHead] | None:
        """What both answers start with: the newest txid when it holds the WAL end, else the WAL end
        and the newest LTX to decide from, or None when the files cannot tell (each counted)."""
        found = self.covered()
        if found is None:
            self.outcomes["no trusted WAL end or LTX"] += 1
            return None
        end, head = found
        if head.end >= end.end:
            self.outcomes["in the newest LTX"] += 1
            return head.txid
        return found

    def covered(self) -> tuple[WalEnd, LtxHead] | None:
        """Steps 1 and 2: the WAL end and the newest LTX (it holds the end if `head.end >= end.end`).

        None when the WAL end or the newest file cannot be trusted, or they are of different WALs.
        """
        end = self._shm.wal_end()  # `state()` written out: this runs after every write
        head = self._newest()
        if end is None or head is None or head.salts != end.salts:
            return None
        return end, head

    def promise(self) -> tuple[int, bool] | None:
        """The prompt answer, from local files only: (txid, whether it is a promise), or None.

        The newest txid if it holds the WAL end (not a promise: it exists); else `newest + 2`, which
        holds the commit but may exist only once the keeper has made it (`TxidKeeper`).
        """
        found = self._look()
        if found is None or isinstance(found, int):
            return None if found is None else (found, False)
        end, head = found
        if end.end - head.end > MAX_PENDING_WAL:
            self.outcomes["too much WAL pending"] += 1
            return None
        self.outcomes["newest + 2"] += 1
        return head.txid + 2, True

    def _newest_txid(self) -> int | None:
        head = self._newest()
        return None if head is None else head.txid

    def after_status(self, end: WalEnd, status: dict[str, Any]) -> tuple[int | None, str]:
        """Step 3, given the reply of `GET /debug/sync-status?path=<database>`: the txid (or None), and why."""
        databases = status.get("databases")
        if not isinstance(databases, list) or len(databases) != 1 or not isinstance(databases[0], dict):
            return None, "unexpected sync-status"
        if databases[0].get("active") is not False:
            return None, _ACTIVE  # or this Litestream does not say: it may have read before us
        head = self._newest()
        if head is None or head.salts != end.salts:
            return None, "no trusted WAL end or LTX"
        if head.end >= end.end:
            return head.txid, "in the newest LTX"
        if end.end - head.end > MAX_PENDING_WAL:
            return None, "too much WAL pending"
        return head.txid + 1, "next txid"
