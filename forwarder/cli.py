"""The `forwarder` command line: `forwarder dev <module:app>` runs a local cluster, `forwarder check`
validates this node's environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .exceptions import ConfigurationError, ForwarderError
from .store import FileStore, Store, parse_store

if TYPE_CHECKING:
    from .dev import Cluster

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forwarder", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev = commands.add_parser(
        "dev",
        help="run an app as a local cluster (one primary, N replicas) on real Litestream",
        description="Run an ASGI app as a primary and N read replicas on loopback, each its own uvicorn process "
        "with its own replicated SQLite database (Litestream replicate + restore -f). Ctrl-C stops everything.",
    )
    dev.add_argument("app", nargs="?", help='the ASGI app as "module:attribute", like uvicorn takes it')
    dev.add_argument(
        "--datasette",
        action="store_true",
        help="serve Datasette on every node (the cluster's admin UI), instead of an app; needs forwarder[datasette]",
    )
    dev.add_argument("--replicas", type=int, default=2, help="number of read replicas (default: 2)")
    dev.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".forwarder-dev"),
        help="directory for databases, the replica store and logs (default: .forwarder-dev)",
    )
    dev.add_argument("--host", default="127.0.0.1", help="interface the apps listen on (default: 127.0.0.1)")
    dev.add_argument(
        "--base-port",
        type=int,
        default=0,
        help="port of the primary; replicas take the next ones (default: 0, pick free ports)",
    )
    dev.add_argument(
        "--regions",
        type=lambda text: [r.strip() for r in text.split(",") if r.strip()],
        default=None,
        help="comma-separated regions: the primary takes the first, replicas cycle through the rest "
        "(default: fra,ams,syd,iad,...)",
    )
    dev.add_argument("--app-dir", type=Path, default=None, help="directory to import the app from (default: .)")
    dev.add_argument(
        "--edge-port",
        type=int,
        default=8080,
        help="port of the edge, the Fly proxy emulator in front of every node (default: 8080; 0 picks a free one)",
    )
    dev.add_argument("--no-edge", action="store_true", help="do not start the edge")
    dev.add_argument(
        "--latency",
        action="append",
        default=[],
        metavar="REGION=DURATION",
        help="simulated latency from the edge to a region's nodes, e.g. --latency ams=80ms (repeatable)",
    )
    dev.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="where Litestream replicates to: file:///dir (default: <data-dir>/replica), "
        "s3://<bucket>/<path>?endpoint=http://host:port&region=... (credentials from AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY), or s3 alone to start a local S3 server (moto) on loopback for the run",
    )
    dev.add_argument(
        "--sync-interval",
        default=None,
        metavar="DURATION",
        help="how often replicate ships commits to the store (default: 10ms for file, 100ms for s3)",
    )
    dev.add_argument(
        "--follow-interval",
        default=None,
        metavar="DURATION",
        help="how often each follower polls the store (default: 10ms for file, 250ms for s3)",
    )
    dev.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment variable for every node, e.g. --env FORWARDER_MODE=replay (repeatable)",
    )
    from .replica.command import add_parser as add_replica_parser

    add_replica_parser(commands)
    check = commands.add_parser(
        "check",
        help="validate this node's environment the way the app would load it; one line per problem",
        description="Check the FORWARDER_* settings, the replication engine (Litestream's control socket or "
        "follower file, or the LiteFS mount and API), the secret, and from a replica the primary. "
        "Prints one line per problem and exits 1 if there is any.",
    )
    check.add_argument(
        "--no-primary",
        action="store_true",
        help="do not contact the primary (at start-up, a replica must start even if the primary is briefly down)",
    )
    check.add_argument("--timeout", type=float, default=2.0, help="seconds each network check waits (default: 2)")
    return parser


def _check(args: argparse.Namespace) -> int:
    from .check import check_node

    problems = asyncio.run(check_node(primary=not args.no_primary, timeout=args.timeout))
    for problem in problems:
        print(f"forwarder check: {problem}", file=sys.stderr)
    if not problems:
        print("forwarder check: ok", flush=True)
    return 1 if problems else 0


def _check_cluster(cluster: Cluster) -> None:
    """Refuse to start a cluster whose nodes would not load their settings (one line per problem)."""
    from .check import check_settings

    found: dict[str, list[str]] = {}
    for node in cluster.nodes:
        for problem in check_settings(cluster.app_env(node.id))[1]:
            found.setdefault(problem, []).append(node.id)
    if found:
        lines = [f"{', '.join(ids)}: {problem}" for problem, ids in found.items()]
        raise ConfigurationError("\n".join(lines))


async def _dev(args: argparse.Namespace) -> int:
    async with contextlib.AsyncExitStack() as stack:
        store = await _store(args, stack)
        return await _run_cluster(args, store)


async def _store(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> Store | None:
    """The store `--store` names; for `s3` alone, a local S3 server started for this run (stopped by `stack`)."""
    if args.store is None:
        return None
    if args.store != "s3":
        return parse_store(args.store)
    from .dev.s3server import LocalS3Server

    server = LocalS3Server(log_path=args.data_dir.absolute() / "logs" / "moto.log")
    await server.start()
    stack.push_async_callback(server.stop)
    print(f"Local S3 server (moto): {server.endpoint}, bucket forwarder-dev", flush=True)
    return await server.store("forwarder-dev", "app.db")


async def _run_cluster(args: argparse.Namespace, store: Store | None) -> int:
    from .dev import Cluster
    from .dev.edge import parse_duration, parse_latency
    from .engines.litestream_config import recommended_intervals

    if args.datasette == bool(args.app):
        raise ValueError("give the app (module:attribute) or --datasette, not both or neither")
    app = "forwarder.datasette:app" if args.datasette else args.app

    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--env takes NAME=VALUE, got {item!r}")
        env[name] = value
    intervals = None
    if args.sync_interval or args.follow_interval:
        default = recommended_intervals(store or FileStore(args.data_dir / "replica"))
        intervals = dataclasses.replace(
            default,
            sync=parse_duration(args.sync_interval) if args.sync_interval else default.sync,
            follow=parse_duration(args.follow_interval) if args.follow_interval else default.follow,
        )
    cluster = Cluster(
        app=app,
        data_dir=args.data_dir,
        replicas=args.replicas,
        host=args.host,
        regions=args.regions,
        base_port=args.base_port,
        app_dir=args.app_dir,
        env=env,
        edge=not args.no_edge,
        edge_port=args.edge_port,
        latency=parse_latency(args.latency),
        store=store,
        intervals=intervals,
    )
    _check_cluster(cluster)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    starting = asyncio.create_task(cluster.start())
    stop_requested = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({starting, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # Ctrl-C during start: start() stops what it started when cancelled
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return 130
        starting.result()  # a failed start already stopped everything; this re-raises its error
        _print_table(cluster)
        await stop_requested
        print("Stopping...", flush=True)
        return 0
    finally:
        stop_requested.cancel()
        await cluster.stop()


def _print_table(cluster: Cluster) -> None:
    rows = [("ID", "REGION", "ROLE", "URL")] + [(n.id, n.region, n.role, n.url) for n in cluster.nodes]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if cluster.edge_url:
        print(f"\nEdge (the Fly proxy emulator in front of every node): {cluster.edge_url}")
        for node in cluster.nodes:
            print(f"  {node.region} ({node.role}): {cluster.edge_url}/?_region={node.region}")
        print("  (or send the header fly-prefer-region: <region>)")
    print(f"\nReplicated through the {cluster.store.describe()}")
    print(f"Data in {cluster.data_dir}, logs in {cluster.logs_dir}, state in {cluster.data_dir / 'cluster.json'}")
    print("Press Ctrl-C to stop.", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `forwarder` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe and watchdog poll
    if args.command == "check":
        return _check(args)
    if args.command == "dev":
        try:
            return asyncio.run(_dev(args))
        except (ForwarderError, ValueError) as exc:
            for line in str(exc).splitlines():  # one line per problem, each saying whose it is
                print(f"forwarder dev: {line}", file=sys.stderr)
            return 1
    if args.command == "replica":
        from .replica.command import run as run_replica

        try:
            return asyncio.run(run_replica(args))
        except (ForwarderError, ValueError) as exc:
            print(f"forwarder replica: {exc}", file=sys.stderr)
            return 1
    raise AssertionError(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
