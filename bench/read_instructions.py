"""Read path in instructions: what one GET costs a replica's server process, middleware against bare app.

Throughput on a shared 2-core machine moves with its neighbours; the number of instructions a request
runs does not. Each server (`bench.apps.read_app` bare, and wrapped in `ForwarderMiddleware` as a
Litestream replica, on uvicorn's default parser, httptools; the wrapped one on h11 as well, for what
the parser costs) runs under `valgrind --tool=callgrind` with counting off; after a warm-up,
counting is switched on for exactly `requests` sequential keep-alive GETs of a path, then off, and
the dump's total divided by `requests` is the figure. Each path is asked as a bare `GET` with
`Host` alone; `/hello` also as a browser asks for a page, with 14 headers and a cookie (`CASES`),
because the middleware looks at every header and the bare app at none. The servers are counted at the same time,
each in its own process, so nothing another does is in its count. (The
SQLModel app is not counted this way: `forwarder.sqlalchemy` keeps an idle replica connection for
10 ms, and at valgrind's speed that linger ends between two requests, so the count would include a
connection opened per request that the app at full speed does not open.)

It also says which functions the difference is made of: the same servers without valgrind
(`bench.apps.call_counter`) count every function called in the event loop's thread over `requests`
GETs, and the functions the middleware adds are listed with their calls per request.

    .venv/bin/python -m bench.read_instructions [--requests 400]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from bench.read_path import make_database
from bench.servers import REPO, free_port, stop_group
from bench.stats import report

COLUMNS = [
    "handler",
    "bare instructions / request",
    "forwarder instructions / request",
    "added by the middleware",
    "ratio (bare / forwarder)",
    "forwarder on h11 instructions / request",
    "requests",
]
SIDES = {"bare": "0", "forwarder": "1"}
H11 = "forwarder on h11"
_TOTALS = re.compile(rb"^totals:\s*(\d+)", re.MULTILINE)
_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")


# What a browser sends with a page request (Chromium's navigation headers, a session cookie of the
# app's own): every header is one more for the middleware's entry look, none for the bare app.
BROWSER_HEADERS = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n"
    "Accept-Language: en-GB,en;q=0.9\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Referer: http://127.0.0.1/books\r\n"
    "Connection: keep-alive\r\n"
    "Cookie: session=eyJ1c2VyIjo0Mn0.Z2x1ZQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ; theme=dark\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "Sec-Fetch-Dest: document\r\n"
    "Sec-Fetch-Mode: navigate\r\n"
    "Sec-Fetch-Site: same-origin\r\n"
    "Sec-Fetch-User: ?1\r\n"
    "Priority: u=0, i\r\n"
)
CASES = (
    ("/rows", "/rows", ""),
    ("/hello", "/hello", ""),
    ("/hello, a browser's 14 headers", "/hello", BROWSER_HEADERS),
)
"""(handler as reported, path, headers besides Host): each counted on every server."""


def get_many(port: int, path: str, count: int, headers: str = "") -> None:
    """`count` GETs of `path` (with `headers`), one after another on one keep-alive connection, each read
    to its end."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()
    send_many(port, request, count, b"200", f"GET {path}")


def send_many(port: int, request: bytes, count: int, status: bytes, what: str) -> None:
    """Send `request` `count` times, one after another on one keep-alive connection, each answer read to
    its end and required to have `status` (else RuntimeError naming `what`)."""
    expected = b"HTTP/1.1 " + status
    with socket.create_connection(("127.0.0.1", port), timeout=120) as conn:
        pending = b""
        for _ in range(count):
            conn.sendall(request)
            while b"\r\n\r\n" not in pending:
                pending += _recv(conn)
            head, _, pending = pending.partition(b"\r\n\r\n")
            if not head.startswith(expected):
                raise RuntimeError(f"{what}: {head.splitlines()[0].decode('latin-1')}")
            match = _LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            while len(pending) < length:
                pending += _recv(conn)
            pending = pending[length:]


def _recv(conn: socket.socket) -> bytes:
    data = conn.recv(65536)
    if not data:
        raise RuntimeError("the server closed the connection")
    return data


def total_instructions(dump: Path) -> int:
    """The instruction total of one callgrind dump (its `totals:` line)."""
    match = _TOTALS.search(dump.read_bytes())
    if match is None:
        raise RuntimeError(f"no instruction total in {dump}")
    return int(match.group(1))


@contextmanager
def server(
    wrapped: str, database: Path, out: Path, *, callgrind: bool, http: str | None = None
) -> Iterator[tuple[int, int]]:
    """A read-app server on a free port (uvicorn's default parser, or `http`), under callgrind (counting
    off) or counting calls; yields (port, pid)."""
    env = {"BENCH_WRAPPED": wrapped, "BENCH_DATABASE": str(database), "BENCH_CALLS_OUT": str(out)}
    app = "bench.apps.read_app:app" if callgrind else "bench.apps.call_counter:app"
    ready = partial(get_many, path="/hello", count=1)
    with app_server(app, env, out, callgrind=callgrind, http=http, ready=ready) as started:
        yield started


@contextmanager
def app_server(
    app: str,
    env: dict[str, str],
    out: Path,
    *,
    callgrind: bool,
    ready: Callable[[int], None],
    http: str | None = None,
) -> Iterator[tuple[int, int]]:
    """uvicorn serving `app` on a free port with `env`, under callgrind (counting off, dumps to `out`)
    or not; ready once `ready(port)` returns without an error; yields (port, pid)."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--no-access-log", "--log-level", "warning"]
    if http is not None:
        argv += ["--http", http]
    if callgrind:
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *argv]
    process = subprocess.Popen(
        argv, env={**os.environ, **env}, cwd=REPO, start_new_session=True, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 180  # Python's start-up under valgrind takes tens of seconds
        while True:
            try:
                ready(port)
                break
            except (OSError, RuntimeError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {app} server did not start (exit status {process.poll()})") from None
                time.sleep(0.2)
        yield port, process.pid
    finally:
        stop_group(process, 30)  # valgrind writes its last dump on the way out


def count_instructions(
    wrapped: str, database: Path, tmp: Path, requests: int, http: str | None = None
) -> dict[str, int]:
    """Instructions per GET of each path on one server under callgrind."""
    out = tmp / f"callgrind-{wrapped}-{http or 'default'}.out"
    per_request: dict[str, int] = {}
    with server(wrapped, database, out, callgrind=True, http=http) as (port, pid):
        for index, (case, path, headers) in enumerate(CASES, start=1):
            get_many(port, path, max(50, requests // 4), headers)  # warm-up: caches, lazy imports, the thread pool
            counted = counted_run(pid, Path(f"{out}.{index}"), partial(get_many, port, path, requests, headers))
            per_request[case] = round(counted / requests)
    return per_request


def counted_run(pid: int, dump: Path, run: Callable[[], None]) -> int:
    """The instructions process `pid` (under callgrind, counting off) runs while `run()` runs: counting
    on, `run()`, counting off, and the dump callgrind then writes to `dump` read."""
    _control(pid, "--instr=on")
    run()
    _control(pid, "--instr=off")
    _control(pid, "--dump")
    deadline = time.monotonic() + 30
    while not dump.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return total_instructions(dump)


def _control(pid: int, option: str) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True, timeout=60)


def count_calls(wrapped: str, database: Path, tmp: Path, requests: int) -> dict[str, dict[str, float]]:
    """Calls per GET of each path, by function, in the event loop's thread of one server."""
    out = tmp / f"calls-{wrapped}.json"
    calls: dict[str, dict[str, float]] = {}
    with server(wrapped, database, out, callgrind=False) as (port, pid):
        for case, path, headers in CASES:
            get_many(port, path, requests, headers)  # warm-up
            os.kill(pid, signal.SIGUSR1)
            get_many(port, path, requests, headers)
            os.kill(pid, signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while not out.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            rows = json.loads(out.read_text())
            out.unlink()
            calls[case] = {f"{where}:{name}": count / requests for where, name, count in rows}
    return calls


def added_calls(bare: dict[str, float], ours: dict[str, float]) -> list[dict[str, Any]]:
    """The functions the middleware adds to a request (calls per request, forwarder minus bare), most first."""
    difference = {name: round(ours.get(name, 0.0) - bare.get(name, 0.0), 2) for name in set(bare) | set(ours)}
    added = sorted((name for name, more in difference.items() if more >= 0.5), key=lambda n: (-difference[n], n))
    return [{"function": name, "calls / request": difference[name]} for name in added]


def run(requests: int) -> dict[str, Any]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("the instruction count needs valgrind: apt-get install valgrind")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        database = tmp / "app.db"
        make_database(database)
        with ThreadPoolExecutor(len(SIDES) + 1) as pool:  # each count is the process's own: side by side
            futures = {name: pool.submit(count_instructions, w, database, tmp, requests) for name, w in SIDES.items()}
            # What the nodes would pay on h11 instead of httptools (`forwarder dev`'s default).
            futures[H11] = pool.submit(count_instructions, "1", database, tmp, requests, "h11")
            counted = {name: future.result() for name, future in futures.items()}
        calls = {name: count_calls(wrapped, database, tmp, requests) for name, wrapped in SIDES.items()}
    rows = []
    cases = [case for case, _, _ in CASES]
    for path in cases:
        bare, ours = counted["bare"][path], counted["forwarder"][path]
        rows.append(
            {
                "handler": path,
                "bare instructions / request": bare,
                "forwarder instructions / request": ours,
                "added by the middleware": ours - bare,
                "ratio (bare / forwarder)": round(bare / ours, 3),
                "forwarder on h11 instructions / request": counted[H11][path],
                "requests": requests,
            }
        )
    added = {path: added_calls(calls["bare"][path], calls["forwarder"][path]) for path in cases}
    python_calls = {path: {name: round(sum(calls[name][path].values()), 1) for name in SIDES} for path in cases}
    return {"rows": rows, "added_calls": added, "calls_per_request": python_calls, "requests": requests}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="read-path instructions per request, middleware vs bare app")
    parser.add_argument("--requests", type=int, default=400, help="GETs counted per path and server")
    args = parser.parse_args()
    result = run(args.requests)
    report("read_instructions", result, result["rows"], COLUMNS)
    for path, added in result["added_calls"].items():
        print(f"{path}: calls per request {result['calls_per_request'][path]}; added by the middleware:")
        for row in added:
            print(f"  {row['calls / request']:5.2f}  {row['function']}")
