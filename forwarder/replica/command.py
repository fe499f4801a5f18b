"""`forwarder replica`: run a replica host's Litestream follower under a `ReplicaSupervisor`.

It replaces a bare `litestream restore -f` unit: it restores the copy (from scratch, as 0.5.17
requires), follows the store, and restores it again into a new generation, swapped in without a
window, when the follower stops advancing while the primary is ahead, exits, or the guard sees a
write by something other than the follower. SIGTERM/SIGINT stop it; the copy stays readable.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
from pathlib import Path
from typing import Any

from ..engines.litestream_config import recommended_intervals
from ..exceptions import EngineError
from ..store import Store, parse_store
from .primary import HealthPosition, PrimaryPosition, StorePosition
from .store_files import CROWDED, crowded, files_by_level, ltx_files
from .supervisor import MIN_GAP, STALL_LIMIT, ReplicaSupervisor

__all__ = ["add_parser", "run"]

logger = logging.getLogger("forwarder.replica")


def add_parser(commands: Any) -> None:
    """Add the `replica` subcommand to the `forwarder` parser's subparsers."""
    parser = commands.add_parser(
        "replica",
        help="run this replica host's Litestream follower, restoring it again (without a window) when it stalls",
        description=__doc__,
    )
    parser.add_argument(
        "--database",
        type=Path,
        default=Path(os.environ.get("FORWARDER_DATABASE", "data/app.db")),
        help="the node's database path, a symlink into <dir>/.gen-<n>/ (default: $FORWARDER_DATABASE or data/app.db)",
    )
    parser.add_argument("store", help="the store to follow: file:///dir or s3://bucket/path?endpoint=...&region=...")
    parser.add_argument(
        "--primary-url",
        default=os.environ.get("FORWARDER_PRIMARY_URL"),
        help="the primary's internal URL, for its txid at /_forwarder/health (default: $FORWARDER_PRIMARY_URL; "
        "without it the txid is read from the store with `litestream ltx`)",
    )
    parser.add_argument("--follow-interval", default=None, metavar="DURATION", help="default: 10ms file, 250ms s3")
    parser.add_argument(
        "--stall-limit",
        type=float,
        default=STALL_LIMIT,
        metavar="SECONDS",
        help=f"restore again after this long without progress while the primary is ahead (default: {STALL_LIMIT:g})",
    )
    parser.add_argument(
        "--min-gap",
        type=float,
        default=MIN_GAP,
        metavar="SECONDS",
        help=f"least time between two restores; doubled per repeated stall up to 60 s (default: {MIN_GAP:g})",
    )
    parser.add_argument(
        "--log", type=Path, default=None, help="the follower's output (default: <database dir>/litestream-follower.log)"
    )


async def run(args: argparse.Namespace) -> int:
    """Run the supervisor until SIGTERM or SIGINT."""
    from ..dev.edge import parse_duration

    store = parse_store(args.store)
    intervals = recommended_intervals(store)
    if args.follow_interval:
        intervals = dataclasses.replace(intervals, follow=parse_duration(args.follow_interval))
    primary: PrimaryPosition = HealthPosition(args.primary_url) if args.primary_url else StorePosition(store)
    database = args.database.absolute()
    supervisor = ReplicaSupervisor(
        os.uname().nodename,
        database,
        store,
        log_path=args.log or database.parent / "litestream-follower.log",
        intervals=intervals,
        primary=primary,
        stall_limit=args.stall_limit,
        min_gap=args.min_gap,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await supervisor.start()
        logger.info("%s restored at %s from %s; following", database, supervisor.position(), store.describe())
        # Beside the watchdog, not before it: a slow store must not hold up the stall checks.
        checking = asyncio.create_task(warn_if_crowded(store))
        watching = asyncio.create_task(supervisor.run())
        await stopping.wait()
        for task in (watching, checking):
            task.cancel()
        await asyncio.gather(watching, checking, return_exceptions=True)
        return 0
    finally:
        await supervisor.stop()
        if isinstance(primary, HealthPosition):
            await primary.aclose()


async def warn_if_crowded(store: Store, limit: int = CROWDED) -> None:
    """Log a warning when the store holds more than `limit` L1 and L2 files (every idle poll lists them)."""
    try:
        warning = crowded(files_by_level(await ltx_files(store)), limit)
    except EngineError as exc:
        logger.warning("could not count the LTX files of %s: %s", store.describe(), exc)
        return
    if warning is not None:
        logger.warning("%s: %s", store.describe(), warning)
