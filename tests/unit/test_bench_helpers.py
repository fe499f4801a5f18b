"""The arithmetic and parsing the benchmarks' published figures rest on."""

from __future__ import annotations

import http.server
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.primary_cost import cost_row
from bench.profile_hop import package_of, self_time_by_package
from bench.read_instructions import BROWSER_HEADERS, added_calls, get_many, total_instructions
from bench.read_path import pair_cpus, pin, spread
from bench.stats import percentile, summary_ms, table
from bench.write_instructions import post_many


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_summary_reports_milliseconds() -> None:
    assert summary_ms([0.001, 0.002, 0.003]) == {"n": 3, "p50_ms": 2.0, "p99_ms": 3.0, "max_ms": 3.0}


def test_table_is_markdown() -> None:
    assert table([{"a": 1, "b": "x"}], ["a", "b"]) == "| a | b |\n|---|---|\n| 1 | x |"


def test_frames_are_attributed_to_their_package() -> None:
    site = "/venv/lib/python3.11/site-packages"
    assert package_of("forward_http (/work/forwarder/middleware/proxy.py:100)") == "forwarder"
    assert package_of("send (httpx/_client.py:1629)") == "httpx"
    assert package_of(f"handle (/x{site}/httpcore/_async/http11.py:86)") == "httpcore"
    assert package_of("_run_once (/usr/lib/python3.11/asyncio/base_events.py:1884)") == "asyncio"
    assert package_of("select (/usr/lib/python3.11/selectors.py:468)") == "asyncio"
    assert package_of("wait (/usr/lib/python3.11/threading.py:327)") == "threads (to_thread handoff)"
    assert package_of("parse (/usr/lib/python3.11/urllib/parse.py:5)") == "other"


def test_self_time_counts_the_innermost_frame(tmp_path: Path) -> None:
    raw = tmp_path / "profile.raw"
    raw.write_text(
        'process 1:"uvicorn";run (uvicorn/main.py:1);forward_http (forwarder/middleware/proxy.py:100) 7\n'
        'process 1:"uvicorn";run (uvicorn/main.py:1);send (httpx/_client.py:1629) 3\n'
    )
    assert self_time_by_package(raw) == (10, {"forwarder": 7, "httpx": 3})


def test_the_spread_is_the_half_width_of_the_medians_interval() -> None:
    assert spread([0.9] * 10) == 0
    tight = spread([0.90, 0.91, 0.89, 0.90, 0.92, 0.88, 0.90, 0.91])
    wide = spread([0.70, 1.10, 0.80, 1.00, 0.90, 0.60, 1.20, 0.90])
    assert 0 < tight < 0.02 < wide
    assert spread([0.70, 1.10, 0.80, 1.00]) == spread([0.70, 1.10, 0.80, 1.00])  # seeded: reproducible


def test_pin_puts_every_thread_of_a_process_on_one_cpu() -> None:
    cpus = pair_cpus()
    if not cpus:
        assert len(os.sched_getaffinity(0)) < 2
        return
    # A child with a second thread: both must move.
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        tasks = Path(f"/proc/{child.pid}/task")
        for _ in range(200):
            if len(list(tasks.iterdir())) >= 2:
                break
            time.sleep(0.01)  # until the child has started its thread
        pin(child.pid, cpus[1])
        assert {os.sched_getaffinity(int(tid.name)) == {cpus[1]} for tid in tasks.iterdir()} == {True}
    finally:
        child.kill()
        child.wait(5)


def test_the_instruction_total_is_the_dumps_totals_line(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1"
    dump.write_bytes(b"# callgrind format\nevents: Ir\nsummary: 0\nfn=(1) main\n16 3\ntotals: 1129008466\n")
    assert total_instructions(dump) == 1129008466
    dump.write_bytes(b"events: Ir\n")
    with pytest.raises(RuntimeError, match="no instruction total"):
        total_instructions(dump)


def test_added_calls_are_the_difference_per_request_most_first() -> None:
    bare = {"C:dict.get": 7.0, "starlette:__call__": 3.0}
    ours = {"C:dict.get": 13.0, "starlette:__call__": 3.0, "forwarder/guard.py:admit": 1.0, "x:rare": 0.2}
    assert added_calls(bare, ours) == [
        {"function": "C:dict.get", "calls / request": 6.0},
        {"function": "forwarder/guard.py:admit", "calls / request": 1.0},
    ]


class _Counting(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every GET of one `get_many` on one connection
    seen: list[tuple[str, int]] = []
    header_counts: list[int] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.client_address[1]))
        self.header_counts.append(len(self.headers))
        body = b"hello" if self.path != "/missing" else b"no"
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, self.client_address[1]))
        answer = b'{"id": %d}' % len(body)
        self.send_response(201 if self.path == "/write" else 404)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def counting_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        _Counting.seen.clear()
        _Counting.header_counts.clear()


def test_get_many_sends_exactly_that_many_gets_on_one_connection(counting_server: int) -> None:
    get_many(counting_server, "/hello", 25)
    assert len(_Counting.seen) == 25
    assert {path for path, _ in _Counting.seen} == {"/hello"}
    assert len({port for _, port in _Counting.seen}) == 1
    with pytest.raises(RuntimeError, match="404"):
        get_many(counting_server, "/missing", 1)


def test_post_many_sends_that_many_writes_on_one_connection_and_wants_201(counting_server: int) -> None:
    post_many(counting_server, 7)
    assert [path for path, _ in _Counting.seen] == ["/write"] * 7
    assert len({port for _, port in _Counting.seen}) == 1


def test_the_browser_case_sends_fourteen_headers_with_every_get(counting_server: int) -> None:
    get_many(counting_server, "/hello", 3, BROWSER_HEADERS)
    assert _Counting.header_counts == [14, 14, 14]


def test_primary_cost_ratios_are_the_median_of_each_rounds_own() -> None:
    # The load drifts through a run: round 2 ran everything at half speed. Paired per round, the
    # ratio stays 0.8; as a ratio of medians it would read 0.8 only by luck of which rounds were slow.
    def runs(*rps: float) -> list[dict[str, float]]:
        return [{"rps": r, "p50_us": 1000.0} for r in rps]

    setups = ("bare", "litestream", "forwarder")
    row = cost_row(
        8,
        {"bare": runs(1000, 500, 1000), "litestream": runs(900, 450, 950), "forwarder": runs(720, 360, 760)},
        1.0,
        setups,
    )
    assert row["forwarder / litestream"] == 0.8
    assert row["litestream / bare"] == 0.9
    assert row["forwarder req/s"] == 720  # the medians of the rounds, as before
