"""`forwarder check` and `forwarder dev`'s check: each problem reported, one line each, exit status 1."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from forwarder.check import check_node, check_settings
from forwarder.cli import main
from forwarder.dev.edge import serve_edge
from forwarder.dev.fake_litefs import FakeLiteFS

pytestmark = pytest.mark.anyio

SECRET = {"FORWARDER_SECRET": "s"}


async def problems(**env: str) -> list[str]:
    return await check_node({**env}, timeout=1.0)


def one(found: list[str], *words: str) -> str:
    """The only problem reported, after checking it contains every one of `words`."""
    assert len(found) == 1, found
    for word in words:
        assert word in found[0], (word, found[0])
    return found[0]


# -- settings and the secret -----------------------------------------------------------------


async def test_a_bad_setting_is_one_line_and_nothing_else_is_checked() -> None:
    found = await problems(FORWARDER_MODE="bogus", FORWARDER_PRIMARY_URL="http://127.0.0.1:1")
    one(found, "FORWARDER_MODE='bogus' is not allowed: use one of auto, proxy, replay")


async def test_a_replica_without_the_secret(tmp_path: Path) -> None:
    found = await problems(FORWARDER_PRIMARY_URL="http://127.0.0.1:1", FORWARDER_DATABASE=str(tmp_path / "app.db"))
    assert found[0].startswith("FORWARDER_SECRET is not set: a replica signs its calls")
    assert len(found) == 2 and "the primary at http://127.0.0.1:1" in found[1]  # still checked


async def test_litefs_without_the_secret(tmp_path: Path) -> None:
    async with FakeLiteFS(tmp_path / "litefs") as fake:
        found = await problems(
            FORWARDER_ENGINE="litefs", FORWARDER_DATABASE=str(fake.mount / "db"), FORWARDER_LITEFS_API=fake.api_url
        )
    one(found, "FORWARDER_SECRET is not set: with LiteFS any node can become a replica")


async def test_a_litestream_replica_without_the_primary_url(tmp_path: Path) -> None:
    found = await problems(FORWARDER_ROLE="replica", FORWARDER_DATABASE=str(tmp_path / "app.db"), **SECRET)
    one(found, "FORWARDER_PRIMARY_URL is not set")


def test_check_settings_reads_exactly_the_environment_given() -> None:
    os.environ["FORWARDER_MODE"] = "bogus"
    settings, found = check_settings({"FORWARDER_MODE": "proxy"})
    assert found == [] and settings is not None and settings.mode == "proxy"
    assert os.environ["FORWARDER_MODE"] == "bogus"  # the process's own environment is back


# -- Litestream ------------------------------------------------------------------------------


@asynccontextmanager
async def control_socket(path: Path, status: int, body: bytes) -> AsyncIterator[None]:
    """A Unix socket that answers every HTTP request with `status` and `body`, as Litestream's would."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(answer, path=str(path))
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


async def test_a_litestream_primary_whose_control_socket_is_missing(tmp_path: Path) -> None:
    found = await problems(FORWARDER_DATABASE=str(tmp_path / "app.db"))
    one(found, f"control socket {tmp_path / 'litestream.sock'} does not exist", "litestream replicate")


async def test_a_litestream_primary_whose_control_socket_does_not_answer(tmp_path: Path) -> None:
    (tmp_path / "litestream.sock").write_text("a stale file, not a socket")
    found = await problems(FORWARDER_DATABASE=str(tmp_path / "app.db"))
    one(found, "did not answer GET /txid", "is `litestream replicate` running?")


async def test_a_litestream_primary_whose_socket_does_not_know_the_database(tmp_path: Path) -> None:
    async with control_socket(tmp_path / "litestream.sock", 404, b'{"error": "database not found"}'):
        found = await problems(FORWARDER_DATABASE=str(tmp_path / "app.db"))
    one(found, "answered GET /txid with 404", f"does litestream.yml replicate {tmp_path / 'app.db'}?")


async def test_a_litestream_primary_whose_socket_answers_is_fine(tmp_path: Path) -> None:
    async with control_socket(tmp_path / "litestream.sock", 200, b'{"txid": 7}'):
        assert await problems(FORWARDER_DATABASE=str(tmp_path / "app.db")) == []


def _replica(database: Path) -> dict[str, str]:
    return {"FORWARDER_PRIMARY_URL": "http://127.0.0.1:1", "FORWARDER_DATABASE": str(database), **SECRET}


async def test_a_replica_whose_directory_is_missing(tmp_path: Path) -> None:
    found = await check_node(_replica(tmp_path / "nowhere" / "app.db"), primary=False)
    one(found, f"the replica's directory {tmp_path / 'nowhere'} does not exist")


async def test_a_replica_whose_directory_is_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As root every directory is writable, so the refusal is simulated at the one call that asks.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    found = await check_node(_replica(tmp_path / "app.db"), primary=False)
    one(found, f"the replica's directory {tmp_path} is not writable")


async def test_a_replica_whose_txid_file_holds_garbage(tmp_path: Path) -> None:
    (tmp_path / "app.db-txid").write_text("not a txid\n")
    found = await check_node(_replica(tmp_path / "app.db"), primary=False)
    one(found, "app.db-txid holds 'not a txid', not a txid")


async def test_a_replica_being_restored_or_restored_is_fine(tmp_path: Path) -> None:
    assert await check_node(_replica(tmp_path / "app.db"), primary=False) == []  # restoring: no -txid yet
    (tmp_path / "app.db-txid").write_text("00000000000003e8\n")
    assert await check_node(_replica(tmp_path / "app.db"), primary=False) == []


# -- LiteFS ----------------------------------------------------------------------------------


def _litefs(mount: Path, api: str) -> dict[str, str]:
    return {
        "FORWARDER_ENGINE": "litefs",
        "FORWARDER_DATABASE": str(mount / "db"),
        "FORWARDER_LITEFS_API": api,
        **SECRET,
    }


async def test_litefs_running_is_fine(tmp_path: Path) -> None:
    async with FakeLiteFS(tmp_path / "litefs", txid=5, primary="other-node") as fake:
        assert await check_node(_litefs(fake.mount, fake.api_url)) == []


async def test_litefs_not_mounted_and_not_answering(tmp_path: Path) -> None:
    found = await check_node(_litefs(tmp_path / "litefs", "http://127.0.0.1:1"), timeout=1.0)
    assert len(found) == 2, found
    assert f"the LiteFS mount {tmp_path / 'litefs'} does not exist" in found[0]
    assert "the LiteFS API at http://127.0.0.1:1 did not answer GET /info" in found[1]


async def test_litefs_files_that_hold_garbage(tmp_path: Path) -> None:
    async with FakeLiteFS(tmp_path / "litefs", txid=5, primary="other-node") as fake:
        fake.pos_path.write_text("garbage\n")
        fake.primary_path.write_text("two words\n")
        found = await check_node(_litefs(fake.mount, fake.api_url))
    assert len(found) == 2, found
    assert "db-pos holds 'garbage\\n', not a LiteFS position" in found[0]
    assert ".primary holds 'two words\\n', not a hostname" in found[1]


# -- the primary -----------------------------------------------------------------------------


@asynccontextmanager
async def node_answering(response: Response) -> AsyncIterator[str]:
    async def health(request: Request) -> Response:
        return response

    async with serve_edge(Starlette(routes=[Route("/_forwarder/health", health)])) as url:
        yield url


def _with_primary(tmp_path: Path, url: str) -> dict[str, str]:
    (tmp_path / "app.db-txid").write_text("00000000000003e8\n")
    return {"FORWARDER_PRIMARY_URL": url, "FORWARDER_DATABASE": str(tmp_path / "app.db"), **SECRET}


async def test_a_replica_whose_primary_is_fine(tmp_path: Path) -> None:
    async with node_answering(JSONResponse({"role": "primary", "txid": "0000000000000001"})) as url:
        assert await check_node(_with_primary(tmp_path, url)) == []


async def test_a_replica_whose_primary_is_unreachable(tmp_path: Path) -> None:
    found = await check_node(_with_primary(tmp_path, "http://127.0.0.1:1"), timeout=1.0)
    one(found, "the primary at http://127.0.0.1:1 did not answer GET /_forwarder/health within 1s")


async def test_a_replica_pointed_at_something_that_is_not_a_forwarder_node(tmp_path: Path) -> None:
    async with node_answering(PlainTextResponse("hello")) as url:
        found = await check_node(_with_primary(tmp_path, url))
    one(found, "answered 200 without forwarder's health report")


async def test_a_replica_pointed_at_another_replica(tmp_path: Path) -> None:
    async with node_answering(JSONResponse({"role": "replica"}, status_code=503)) as url:
        found = await check_node(_with_primary(tmp_path, url))
    one(found, f"the node at {url} is a replica, not the primary")


@asynccontextmanager
async def forwarder_primary(secret: str | None) -> AsyncIterator[str]:
    from forwarder import Forwarder, ForwarderMiddleware, MemoryEngine, MemoryLog, Role, Topology

    node = Forwarder(
        engine=MemoryEngine(MemoryLog(), Role.PRIMARY), topology=Topology("p", "fra", Role.PRIMARY), secret=secret
    )
    async with serve_edge(ForwarderMiddleware(Starlette(), forwarder=node)) as url:
        yield url


async def test_a_replica_whose_primary_holds_the_same_secret_is_fine(tmp_path: Path) -> None:
    async with forwarder_primary(SECRET["FORWARDER_SECRET"]) as url:
        assert await check_node(_with_primary(tmp_path, url)) == []


async def test_a_replica_whose_primary_holds_another_secret_is_told_so(tmp_path: Path) -> None:
    async with forwarder_primary("another secret") as url:
        found = await check_node(_with_primary(tmp_path, url))
    one(found, f"the primary at {url} refused this node's signed channel handshake", "the same FORWARDER_SECRET")


async def test_a_replica_whose_primary_has_no_secret_is_told_so(tmp_path: Path) -> None:
    async with forwarder_primary(None) as url:
        found = await check_node(_with_primary(tmp_path, url))
    one(found, "refused this node's signed channel handshake", "no FORWARDER_SECRET")


async def test_no_primary_skips_the_primary(tmp_path: Path) -> None:
    assert await check_node(_with_primary(tmp_path, "http://127.0.0.1:1"), primary=False) == []


# -- the commands ----------------------------------------------------------------------------


def test_forwarder_check_prints_one_line_per_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ.update(FORWARDER_PRIMARY_URL="http://127.0.0.1:1", FORWARDER_DATABASE=str(tmp_path / "app.db"))
    assert main(["check", "--timeout", "1"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("forwarder check: ") for line in lines), lines
    assert "FORWARDER_SECRET is not set" in lines[0] and "did not answer GET /_forwarder/health" in lines[1]


def test_forwarder_check_says_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.environ.update(FORWARDER_ROLE="replica", FORWARDER_PRIMARY_URL="http://127.0.0.1:1", **SECRET)
    os.environ["FORWARDER_DATABASE"] = str(tmp_path / "app.db")
    assert main(["check", "--no-primary"]) == 0
    assert capsys.readouterr().out == "forwarder check: ok\n"


def test_forwarder_dev_refuses_a_bad_setting_in_one_line_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["dev", "example_app:app", "--env", "FORWARDER_ON_LAG=panic", "--data-dir", str(tmp_path), "--no-edge"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "forwarder dev: node-1, node-2, node-3: invalid forwarder settings: FORWARDER_ON_LAG='panic' is not "
        "allowed: use one of forward, error, stale, or unset it for the default (forward)"
    ]
    assert not (tmp_path / "logs").exists()  # no node was started
