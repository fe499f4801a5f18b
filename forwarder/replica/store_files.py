"""The LTX files a store holds, by level, and when there are so many that every idle poll of a follower is costly.

Litestream 0.5.17's `restore -f` lists all of L0 on every poll and, on a poll that finds nothing
new, all of L1 through L8 as well (`fillFollowGap`); an L1 or L2 file leaves the store only when
the snapshot before it expires. A primary configured with Litestream's default 24 h snapshot (or
forwarder's own config before 2026-12-02) lets L1 grow by a file every compaction interval in
which anything was written, for a day, and every follower of the store pays for each file on
every poll (`bench/follower_cost.py`: 0.07 % of a core per file on a file store; a LIST page per
1,000 files on S3).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

from ..engines.litestream_config import litestream_binary, litestream_environ
from ..exceptions import EngineUnavailable, PositionFormatError
from ..store import Store

__all__ = ["CROWDED", "LTX_TIMEOUT", "crowded", "files_by_level", "ltx_files"]

LTX_TIMEOUT = 10.0
"""Seconds `litestream ltx` gets to list the store."""

CROWDED = 1000
"""L1 and L2 files above which `forwarder replica` warns: more than one LIST page per idle poll on S3,
and more than half a core per follower polling a file store every 10 ms."""


async def ltx_files(store: Store) -> list[dict[str, Any]]:
    """Every LTX file of `store`, as `litestream ltx -json -level all` describes it (`level`, `min_txid`,
    `max_txid`, ...); `EngineUnavailable` when it cannot list the store."""
    process = await asyncio.create_subprocess_exec(
        litestream_binary(),
        "ltx",
        "-json",
        "-level",
        "all",  # L0 is pruned after compaction: an idle store may have its newest txid in L1
        store.url(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=litestream_environ(store),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), LTX_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise EngineUnavailable(f"`litestream ltx {store.url()}` did not answer in {LTX_TIMEOUT:g}s") from None
    if process.returncode != 0:
        raise EngineUnavailable(f"`litestream ltx` failed ({process.returncode}): {err.decode(errors='replace')}")
    try:
        files = json.loads(out or b"[]")
    except ValueError as exc:
        raise PositionFormatError(f"`litestream ltx -json` printed something that is not JSON ({exc})") from None
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise PositionFormatError("`litestream ltx -json` printed something other than a list of files")
    return files


def files_by_level(files: list[dict[str, Any]]) -> Counter[int]:
    """How many of `files` (from `ltx_files`) are at each level."""
    return Counter(f["level"] for f in files if isinstance(f.get("level"), int))


def crowded(counts: Counter[int], limit: int = CROWDED) -> str | None:
    """What to tell the operator when L1 and L2 hold more than `limit` files; None when they do not."""
    listed = counts[1] + counts[2]
    if listed <= limit:
        return None
    return (
        f"the store holds {counts[1]} L1 and {counts[2]} L2 LTX files, and every follower lists them all on each "
        "poll that finds nothing new (CPU on a file store, LIST requests on S3); they leave the store only when "
        "the snapshot before them expires: give the primary's litestream.yml `snapshot: {interval: 1h, "
        "retention: 1h}` (README: How many files the store keeps)"
    )
