"""`BENCH_COMMIT`: how a benchmark app's forwarder primary finds its writes' txids (the bench apps share it).

- unset: as forwarder runs by default;
- `sync`: `POST /sync` for every write, as before the covering check (`forwarder.engines.litestream_position`);
- `exact`: direct writes get the txid a forwarded write gets (the covering check that waits out an
  active sync, as before `promise_position`);
- `prompt`: forwarded writes get the prompt txid direct writes get (`newest + 2`);
- `status`: one sync-status for every direct write (what a quiet primary does); `files`: never;
- `busy`: `files`, with the keeper idle as on a primary whose writes keep coming (under valgrind
  writes come over 10 ms apart, and the keeper would write after each);
- `none`: txid 1 for every write without asking Litestream (not correct: it shows what the txid costs).
"""

from __future__ import annotations

import os
from typing import Any

from forwarder import Forwarder, Txid
from forwarder.engines import litestream_keeper

__all__ = ["apply_commit_mode", "outcomes"]


def apply_commit_mode(forwarder: Forwarder) -> None:
    """Set `forwarder`'s engine up as `BENCH_COMMIT` says (a Litestream engine, for every mode but unset and `none`)."""
    mode = os.environ.get("BENCH_COMMIT")
    engine = forwarder.engine
    if mode == "sync":
        engine.covering = None  # type: ignore[attr-defined]  # LitestreamEngine only
    if mode == "none":

        async def no_txid() -> Txid:
            return Txid(1)

        engine.commit_position = no_txid  # type: ignore[method-assign]
        engine.promise_position = no_txid  # type: ignore[method-assign]
    if mode == "exact":
        engine.promise_position = engine.commit_position  # type: ignore[method-assign]
    if mode in ("status", "files", "busy"):
        engine.quiet_gap = 0.0 if mode == "status" else float("inf")  # type: ignore[attr-defined]
    if mode == "busy":
        # A second of quiet keeps the keeper to what it does while writes keep coming: it waits, and
        # looks at nothing.
        litestream_keeper.QUIET = 1.0
    if mode == "prompt":
        commit_position = forwarder.commit_position

        async def always_prompt(*, prompt: bool = False) -> Txid:
            return await commit_position(prompt=True)

        forwarder.commit_position = always_prompt  # type: ignore[method-assign]


def outcomes(forwarder: Forwarder | None) -> dict[str, Any]:
    """What a bench app's `GET /outcomes` says: how the covering check answered, the keeper's writes, the txid."""
    engine: Any = forwarder.engine if forwarder is not None else None
    covering, keeper = getattr(engine, "covering", None), getattr(engine, "keeper", None)
    return {
        "outcomes": dict(covering.outcomes) if covering is not None else {},
        "keeper writes": keeper.bumps if keeper is not None else 0,
        "status requests": covering.status_requests if covering is not None else 0,
        "txid": int(forwarder.tracker.position) if forwarder is not None else 0,
    }
