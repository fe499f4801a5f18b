"""LiteFSEngine against FakeLiteFS: positions, roles, failover, a dropped events stream, garbage files."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from forwarder import EngineError, Forwarder, PrimaryInfo, Role, Topology, Tracker, Txid
from forwarder.dev.fake_litefs import FakeLiteFS
from forwarder.engines import litefs as litefs_module
from forwarder.engines.litefs import LiteFSEngine
from forwarder.exceptions import ConfigurationError

pytestmark = pytest.mark.anyio

LOGGER = "forwarder.engines.litefs"


@asynccontextmanager
async def node(
    tmp_path: Path, *, api: bool = True, hostname: str = "n2", primary: str | None = "n1", txid: int = 0
) -> AsyncIterator[tuple[FakeLiteFS, LiteFSEngine, Tracker]]:
    """A fake LiteFS node and an engine on it, with a Tracker listening; `api=False` stops the API first."""
    async with FakeLiteFS(tmp_path / "litefs", hostname=hostname, primary=primary, txid=txid) as fake:
        if not api:
            await fake.stop_api()
        engine = LiteFSEngine(fake.mount, api_url=fake.api_url, reconnect_min=0.01, reconnect_max=0.1)
        tracker = Tracker()
        engine.on_position(tracker.advance)
        async with engine:
            tracker.reset(engine.position)
            if api:
                await eventually(lambda: engine.connected)
            yield fake, engine, tracker


async def eventually(condition: Callable[[], object]) -> None:
    """Wait until `condition()` is true (the caller's fail_after bounds it)."""
    while not condition():
        await asyncio.sleep(0.005)


async def waiting(tracker: Tracker, txid: int) -> asyncio.Task[Txid]:
    """A task waiting for `txid`, returned once it is registered (so the test sees it woken, not returning early)."""
    task = asyncio.create_task(tracker.wait_for(Txid(txid), timeout=5))
    await eventually(lambda: tracker.waiting > 0)
    return task


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def without_file_watching(monkeypatch: pytest.MonkeyPatch, *, poll: bool) -> None:
    """Take away inotify (as on a real FUSE mount, where it sees nothing) and, unless `poll`, the
    re-reads while the stream is down: then only the re-read after a reconnect can see a change."""
    monkeypatch.setattr(LiteFSEngine, "_start_inotify", lambda self: False)
    if poll:
        monkeypatch.setattr(litefs_module, "POLL_WHILE_DOWN", 0.01)
    else:
        monkeypatch.setattr(LiteFSEngine, "_pause", lambda self, delay: asyncio.sleep(delay))


# -- positions -------------------------------------------------------------------------------


async def test_pos_file_rewrite_wakes_a_waiter(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with node(tmp_path, api=False) as (fake, engine, tracker):
            assert engine.position == 0
            task = await waiting(tracker, 3)
            fake.commit(3)  # the API is down: only `db-pos` changes
            assert await task == 3
            assert engine.position == 3


async def test_tx_event_wakes_a_waiter(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with node(tmp_path) as (fake, engine, tracker):
            task = await waiting(tracker, 7)
            # Only the event, no `db-pos`: the stream alone moves the position.
            fake.emit({"type": "tx", "db": "other", "data": {"txID": "0000000000000009"}})
            fake.emit({"type": "tx", "db": "db", "data": {"txID": "0000000000000007"}})
            assert await task == 7
            assert engine.position == 7 and not fake.pos_path.exists()


async def test_commits_with_files_and_events_publish_each_position_once(tmp_path: Path) -> None:
    seen: list[Txid] = []
    with anyio.fail_after(10):
        async with node(tmp_path) as (fake, engine, tracker):
            engine.on_position(seen.append)
            task = await waiting(tracker, 5)
            fake.commit(5)
            assert await task == 5
            await asyncio.sleep(0.05)  # let the file watcher see the same commits
            assert seen == sorted(set(seen)) and seen[-1] == 5


async def test_missing_pos_file_is_position_zero(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with node(tmp_path) as (fake, engine, tracker):
            assert not fake.pos_path.exists()
            assert engine.position == 0
            task = await waiting(tracker, 1)
            fake.commit()
            assert await task == 1


async def test_starts_at_the_position_in_the_pos_file(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with node(tmp_path, txid=41) as (fake, engine, tracker):
            assert re.fullmatch(r"0000000000000029/[0-9a-f]{16}\n", fake.pos_path.read_text())
            assert engine.position == 41 and tracker.position == 41


@pytest.mark.parametrize(
    "garbage",
    ["garbage\n", "0000000000000009\n", "000000000000000A/8000000000000000\n", "0000000000000009/80000000000000001\n"],
)
async def test_garbage_pos_file_keeps_the_last_position(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: str
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with anyio.fail_after(10):
        async with node(tmp_path, api=False) as (fake, engine, tracker):
            fake.commit(3)
            await eventually(lambda: engine.position == 3)
            fake.write_raw("db-pos", garbage)
            await eventually(lambda: warnings(caplog, "not a LiteFS position"))
            fake.write_raw("db-pos", garbage)  # the same content again: no second warning
            assert engine.position == 3
            task = await waiting(tracker, 4)
            fake.commit()  # a later valid write still wakes waiters
            assert await task == 4
            assert len(warnings(caplog, "not a LiteFS position")) == 1


async def test_garbage_events_are_ignored_and_the_stream_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with anyio.fail_after(10):
        async with node(tmp_path) as (fake, engine, tracker):
            fake.emit("not json")
            fake.emit("[1, 2]")
            fake.emit({"type": "tx", "db": "db", "data": {"txID": "xyz"}})
            fake.emit({"type": "tx", "db": "db"})
            fake.emit({"type": "primaryChange", "data": {"isPrimary": "yes"}})
            fake.emit({"type": "somethingNew", "data": {}})
            task = await waiting(tracker, 1)
            fake.emit({"type": "tx", "db": "db", "data": {"txID": "0000000000000001"}})
            assert await task == 1
            assert engine.connected and engine.primary == PrimaryInfo(Role.REPLICA, "n1")
            assert len(caplog.records) == 5


async def test_a_failing_listener_does_not_stop_the_engine(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def broken(txid: Txid) -> None:
        raise RuntimeError("listener bug")

    with anyio.fail_after(10):
        async with node(tmp_path) as (fake, engine, tracker):
            engine._position_listeners.insert(0, broken)
            fake.commit()
            await eventually(lambda: engine.position == 1)
            task = await waiting(tracker, 2)
            fake.commit()
            assert await task == 2
            assert engine.connected
            assert any("listener" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


# -- the events stream going away ------------------------------------------------------------


@pytest.mark.parametrize("files", ["watched", "polled", "read on reconnect only"])
@pytest.mark.parametrize("outage", ["stream dropped", "API restarted"])
async def test_commit_while_disconnected_still_wakes_the_waiter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outage: str, files: str
) -> None:
    if files != "watched":
        without_file_watching(monkeypatch, poll=files == "polled")
    with anyio.fail_after(10):
        async with node(tmp_path, txid=1) as (fake, engine, tracker):
            task = await waiting(tracker, 3)
            if outage == "stream dropped":
                assert fake.drop_stream() == 1
            else:
                await fake.stop_api()
            fake.commit(2)  # no stream is connected: no event carries it
            assert fake.streams == 0
            if outage == "API restarted":
                await asyncio.sleep(0.15)  # a few failed reconnects, the backoff grows to reconnect_max
                await fake.start_api()
            assert await task == 3
            # The fake has the new connection only once the engine has dropped the old one.
            await eventually(lambda: fake.streams == 1 and engine.connected)
            # And the stream works again after the reconnect.
            task = await waiting(tracker, 4)
            fake.emit({"type": "tx", "db": "db", "data": {"txID": "0000000000000004"}})
            assert await task == 4


async def test_failover_while_disconnected_is_seen_on_reconnect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_file_watching(monkeypatch, poll=False)
    seen: list[PrimaryInfo] = []
    with anyio.fail_after(10):
        async with node(tmp_path) as (fake, engine, tracker):
            engine.on_primary_change(seen.append)
            await fake.stop_api()
            fake.set_primary(None)  # this node became the primary while nobody listened
            await fake.start_api()
            await eventually(lambda: seen)
            assert seen == [PrimaryInfo(Role.PRIMARY, "n2")] and engine.primary == seen[0]


# -- the primary -----------------------------------------------------------------------------


async def test_starts_with_the_role_from_the_api(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with node(tmp_path, primary="n1") as (_, engine, _):
            assert engine.primary == PrimaryInfo(Role.REPLICA, "n1")
        async with node(tmp_path / "p", primary=None) as (_, engine, _):
            assert engine.primary == PrimaryInfo(Role.PRIMARY, "n2")


async def test_primary_change_event_updates_primary_and_listeners_once(tmp_path: Path) -> None:
    seen: list[PrimaryInfo] = []
    with anyio.fail_after(10):
        async with node(tmp_path) as (fake, engine, _):
            engine.on_primary_change(seen.append)
            fake.set_primary("n3")  # `.primary` rewritten, then the event
            await eventually(lambda: seen)
            assert seen == [PrimaryInfo(Role.REPLICA, "n3")] and engine.primary == seen[0]
            await asyncio.sleep(0.05)  # the file watcher saw `.primary` change too: no second call
            assert len(seen) == 1

            fake.emit({"type": "primaryChange", "data": {"isPrimary": False, "hostname": "n9"}})  # event alone
            await eventually(lambda: len(seen) == 2)
            assert engine.primary == PrimaryInfo(Role.REPLICA, "n9")

            fake.set_primary(None)  # this node becomes the primary
            await eventually(lambda: len(seen) == 3)
            assert engine.primary == PrimaryInfo(Role.PRIMARY, "n2")

            fake.lose_primary()  # a replica again, with no primary known
            await eventually(lambda: len(seen) == 4)
            assert engine.primary == PrimaryInfo(Role.REPLICA, None)
            await asyncio.sleep(0.05)
            assert len(seen) == 4


async def test_api_down_at_start_takes_the_role_from_primary_file(tmp_path: Path) -> None:
    seen: list[PrimaryInfo] = []
    with anyio.fail_after(10):
        async with node(tmp_path, api=False, primary="n1") as (fake, engine, _):
            assert engine.primary == PrimaryInfo(Role.REPLICA, "n1") and not engine.connected
            engine.on_primary_change(seen.append)
            fake.set_primary("n3")  # only the file changes: the API is down
            await eventually(lambda: seen)
            assert engine.primary == PrimaryInfo(Role.REPLICA, "n3")
            await fake.start_api()
            await eventually(lambda: engine.connected)
            assert seen == [PrimaryInfo(Role.REPLICA, "n3")]


async def test_api_down_and_no_primary_file_assumes_primary_until_the_api_says(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    seen: list[PrimaryInfo] = []
    with anyio.fail_after(10):
        async with node(tmp_path, api=False, primary=None) as (fake, engine, _):
            assert engine.primary == PrimaryInfo(Role.PRIMARY)
            assert warnings(caplog, "assuming this node is the primary")
            engine.on_primary_change(seen.append)
            fake.lose_primary()  # in truth a replica without a primary: `.primary` stays absent
            await fake.start_api()
            await eventually(lambda: seen)
            assert seen == [PrimaryInfo(Role.REPLICA, None)] and engine.primary == seen[0]


async def test_blank_primary_file_is_a_replica_with_unknown_primary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with anyio.fail_after(10):
        async with node(tmp_path, api=False, primary="") as (fake, engine, _):
            assert fake.primary_path.read_text() == "\n"
            assert engine.primary == PrimaryInfo(Role.REPLICA, None)
            assert warnings(caplog, "holds no hostname")
            fake.set_primary("n1")
            await eventually(lambda: engine.primary == PrimaryInfo(Role.REPLICA, "n1"))
        # The same with the API up: LiteFS then omits the hostname in /info and its events.
        async with node(tmp_path / "up", primary="") as (fake, engine, _):
            assert engine.primary == PrimaryInfo(Role.REPLICA, None)
            fake.set_primary("n1")
            await eventually(lambda: engine.primary == PrimaryInfo(Role.REPLICA, "n1"))
            fake.set_primary("")
            await eventually(lambda: engine.primary == PrimaryInfo(Role.REPLICA, None))


@pytest.mark.parametrize("garbage", [b"two words\n", b"\x00\xff\xfe\n", b"a" * 300])
async def test_garbage_primary_file_keeps_the_last_primary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with anyio.fail_after(10):
        async with node(tmp_path, api=False, primary="n1") as (fake, engine, _):
            fake.write_raw(".primary", garbage)
            await eventually(lambda: warnings(caplog, "not a hostname"))
            assert engine.primary == PrimaryInfo(Role.REPLICA, "n1")
            fake.set_primary("n4")
            await eventually(lambda: engine.primary == PrimaryInfo(Role.REPLICA, "n4"))


# -- commit_position, lifecycle, settings ----------------------------------------------------


async def test_commit_position_on_the_primary_reads_pos(tmp_path: Path) -> None:
    seen: list[Txid] = []
    with anyio.fail_after(10):
        async with node(tmp_path, primary=None) as (fake, engine, _):
            assert await engine.commit_position() == 0  # no database yet, so no commit
            engine.on_position(seen.append)
            fake.write_raw("db-pos", "0000000000000005/8000000000000001\n")  # as LiteFS does at commit
            assert await engine.commit_position() == 5
            assert 5 in seen and engine.position == 5


async def test_commit_position_on_a_replica_raises(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with node(tmp_path, primary="n1", txid=3) as (_, engine, _):
            with pytest.raises(EngineError, match="only meaningful on the primary"):
                await engine.commit_position()


async def test_aclose_leaves_no_task_running(tmp_path: Path) -> None:
    before = asyncio.all_tasks()
    with anyio.fail_after(10):
        async with node(tmp_path, txid=1) as (fake, engine, _):
            fake.commit()
            await eventually(lambda: engine.position == 2)
            await engine.aclose()
            assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("litefs")]
            assert not engine.connected
            await engine.aclose()  # twice is fine
        # Only the engine's own: a session-wide cluster of other tests (its watchdog) shares this loop.
        left = [task for task in asyncio.all_tasks() - before if "/forwarder/dev/" not in _code_file(task)]
        assert left == []


def _code_file(task: asyncio.Task[object]) -> str:
    code = getattr(task.get_coro(), "cr_code", None)
    return code.co_filename if code is not None else ""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"database": "dir/db"}, "file name in the mount"),
        ({"api_url": "localhost:20202"}, "http://host:port"),
        ({"reconnect_min": 0.0}, "reconnect_min"),
        ({"reconnect_min": 3.0, "reconnect_max": 1.0}, "reconnect_min <= reconnect_max"),
    ],
)
def test_constructor_checks_its_arguments(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LiteFSEngine(tmp_path, **kwargs)


# -- the fake itself ------------------------------------------------------------------------


async def test_fake_litefs_speaks_the_reference_format(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with FakeLiteFS(tmp_path / "litefs", hostname="n2", primary="n1") as fake:
            assert fake.primary_path.read_text() == "n1\n" and not fake.pos_path.exists()
            async with httpx.AsyncClient(base_url=fake.api_url) as client:
                info = await client.get("/info")
                assert info.status_code == 200 and info.text.endswith("}\n") and "\n  " in info.text
                assert info.json()["isPrimary"] is False and info.json()["primary"] == {"hostname": "n1"}
                assert info.json()["clusterID"].startswith("LFSC") and len(info.headers["litefs-id"]) == 16
                async with client.stream("GET", "/events") as events:
                    assert events.headers["content-type"] == "application/json"
                    lines = events.aiter_lines()
                    first = await anext(lines)
                    assert json.loads(first) == {"type": "init", "data": {"isPrimary": False, "hostname": "n1"}}
                    assert " " not in first  # compact, one object per line, as Go's json.Encoder writes it
                    fake.commit()
                    tx = json.loads(await anext(lines))
                    assert tx["type"] == "tx" and tx["db"] == "db"
                    assert set(tx["data"]) == {"txID", "postApplyChecksum", "pageSize", "commit", "timestamp"}
                    assert tx["data"]["txID"] == "0000000000000001" and tx["data"]["timestamp"].endswith("Z")
                    pos = fake.pos_path.read_text()
                    assert pos == f"0000000000000001/{tx['data']['postApplyChecksum']}\n" and len(pos) == 34
                    fake.set_primary(None)
                    assert json.loads(await anext(lines)) == {
                        "type": "primaryChange",
                        "data": {"isPrimary": True, "hostname": "n2"},
                    }
                    assert not fake.primary_path.exists()
                    fake.lose_primary()
                    assert json.loads(await anext(lines)) == {"type": "primaryChange", "data": {"isPrimary": False}}
                    assert fake.drop_stream() == 1
                    with pytest.raises(httpx.TransportError):
                        await anext(lines)
                assert (await client.get("/nope")).status_code == 404


# -- with the real Forwarder -----------------------------------------------------------------


async def test_forwarder_follows_litefs_failover(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with FakeLiteFS(tmp_path / "litefs", hostname="n2", primary="n1", txid=1) as fake:
            engine = LiteFSEngine(fake.mount, api_url=fake.api_url)
            topology = Topology(node_id="n2", region="ams", role=Role.REPLICA, app_name="myapp", port=8080)
            forwarder = Forwarder(engine=engine, topology=topology, secret="s")
            async with forwarder:
                assert forwarder.topology.primary_id == "n1"
                assert forwarder.topology.primary_url == "http://n1.vm.myapp.internal:8080"
                assert forwarder.tracker.position == 1

                fake.set_primary("n3")
                await eventually(lambda: forwarder.topology.primary_id == "n3")
                assert forwarder.topology.primary_url == "http://n3.vm.myapp.internal:8080"
                assert not forwarder.is_primary

                fake.commit()
                assert await forwarder.wait_for(Txid(2), timeout=5) == 2

                fake.set_primary(None)  # this node becomes the primary
                await eventually(lambda: forwarder.is_primary)
                assert forwarder.topology.primary_id == "n2"
                fake.commit()
                assert await forwarder.commit_position() == 3
