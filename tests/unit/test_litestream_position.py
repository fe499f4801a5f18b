"""The covering check's decisions, on a real WAL database and hand-made L0 LTX headers."""

from __future__ import annotations

import asyncio
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest

from forwarder import quick_calls
from forwarder.engines.litestream_files import NewestL0, ShmFile, WalEnd, latest_l0, wal_end
from forwarder.engines.litestream_position import MAX_PENDING_WAL, CoveringCheck

pytestmark = pytest.mark.anyio


def write_ltx(ltx_dir: Path, txid: int, salts: bytes, offset: int, size: int, *, magic: bytes = b"LTX1") -> None:
    ltx_dir.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">4sIIIQQqQqq8s", magic, 2, 4096, 4, txid, txid, 0, 0, offset, size, salts)
    (ltx_dir / f"{txid:016x}-{txid:016x}.ltx").write_bytes(header + bytes(28))


@pytest.fixture
def db(tmp_path: Path) -> Any:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (v)")
    yield path, conn
    conn.close()


def test_wal_end_is_the_committed_end_of_the_wal_file(db: Any) -> None:
    path, conn = db
    first = wal_end(path)
    assert first is not None
    conn.execute("INSERT INTO t VALUES (1)")
    second = wal_end(path)
    assert second is not None and second.salts == first.salts
    assert second.end > first.end
    assert second.end == Path(f"{path}-wal").stat().st_size  # no restart yet: the file ends at the last commit
    assert second.salts == Path(f"{path}-wal").read_bytes()[16:24]


def test_the_wal_index_kept_open_follows_the_file_when_sqlite_makes_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    shm = ShmFile(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE t (v)")
    assert wal_end(path, shm) == wal_end(path) is not None
    conn.close()  # the last connection: SQLite checkpoints and deletes the WAL and its index
    assert not Path(f"{path}-shm").exists() and wal_end(path, shm) is None
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO t VALUES (1)")  # a new WAL, a new index file
    try:
        fresh = wal_end(path)
        assert fresh is not None and wal_end(path, shm) == fresh
    finally:
        conn.close()
        shm.close()


def test_wal_end_is_unknown_without_a_wal_index_or_with_torn_copies(tmp_path: Path, db: Any) -> None:
    assert wal_end(tmp_path / "missing.db") is None
    path, _ = db
    shm = Path(f"{path}-shm")
    raw = bytearray(shm.read_bytes())
    raw[16] ^= 0xFF  # the first copy of the header differs from the second: a writer mid-update
    shm.write_bytes(bytes(raw))
    assert wal_end(path) is None


def test_latest_l0_reads_the_newest_file_and_probes_forward_from_a_hint(tmp_path: Path) -> None:
    ltx = tmp_path / "ltx"
    for txid in (3, 4, 5):
        write_ltx(ltx, txid, b"saltsalt", 32, 100 * txid)
    (ltx / "0000000000000009-0000000000000009.ltx.tmp").write_bytes(b"x")
    head = latest_l0(ltx)
    assert head is not None and (head.txid, head.end) == (5, 532)
    write_ltx(ltx, 6, b"saltsalt", 32, 700)
    assert (h := latest_l0(ltx, hint=4)) is not None and h.txid == 6  # probed 5, 6, then 7 is absent
    assert (h := latest_l0(ltx, hint=2)) is not None and h.txid == 6  # hint's file gone: listed instead
    known = latest_l0(ltx, hint=6)
    (ltx / "0000000000000006-0000000000000006.ltx").write_bytes(b"not read again")
    assert latest_l0(ltx, hint=6, known=known) is known  # the newest is unchanged: its header is not re-read
    assert latest_l0(ltx, hint=6) is None  # (read, it is garbage)
    write_ltx(ltx, 6, b"saltsalt", 32, 700)
    write_ltx(ltx, 7, b"saltsalt", 0, 0)  # a snapshot, not a WAL range: not trusted
    assert latest_l0(ltx, hint=6, known=known) is None  # a newer file: read
    assert latest_l0(ltx) is None
    write_ltx(ltx, 8, b"saltsalt", 32, 10, magic=b"XXXX")
    assert latest_l0(ltx) is None


@pytest.mark.parametrize("libc", [True, False], ids=["libc", "fallback"])
def test_newest_l0_follows_the_directory_from_look_to_look(
    tmp_path: Path, libc: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not libc:
        monkeypatch.setattr(quick_calls, "_LIBC", None)
    ltx = tmp_path / "ltx"
    write_ltx(ltx, 3, b"saltsalt", 32, 300)
    newest = NewestL0(ltx)
    assert (h := newest()) is not None and h.txid == 3  # listed: no hint yet
    assert newest() is h  # nothing new: the same header, not read again
    write_ltx(ltx, 4, b"saltsalt", 32, 400)
    write_ltx(ltx, 5, b"saltsalt", 32, 500)
    assert (h := newest()) is not None and (h.txid, h.end) == (5, 532)  # probed past 4 to 5
    write_ltx(ltx, 6, b"saltsalt", 32, 600)
    assert (h := newest()) is not None and h.txid == 6  # the probe names follow the new hint
    for txid in (3, 4, 5, 6):
        (ltx / f"{txid:016x}-{txid:016x}.ltx").unlink()
    write_ltx(ltx, 1, b"newsalts", 32, 100)  # the directory started over: the hint's file is gone
    assert (h := newest()) is not None and (h.txid, h.salts) == (1, b"newsalts")
    (ltx / f"{1:016x}-{1:016x}.ltx").write_bytes(b"garbage")
    write_ltx(ltx, 2, b"newsalts", 0, 0)  # a snapshot, not a WAL range: not trusted, the hint stays
    assert newest() is None and newest.hint == 1
    write_ltx(ltx, 2, b"newsalts", 32, 200)
    assert (h := newest()) is not None and h.txid == 2


def status(active: bool) -> dict[str, Any]:
    return {"databases": [{"path": "/x", "active": active, "txid": 1}]}


async def test_the_txid_is_the_newest_if_it_holds_the_wal_end_else_the_next_when_no_sync_runs(db: Any) -> None:
    path, conn = db
    check = CoveringCheck(path)
    end = wal_end(path)
    assert end is not None
    write_ltx(check.ltx_dir, 10, end.salts, 32, end.end - 32)
    found = check.covered()
    assert found is not None and found[1].txid == 10 and found[1].end >= found[0].end  # in txid 10: no status

    conn.execute("INSERT INTO t VALUES (2)")  # committed, not in any LTX yet
    found = check.covered()
    assert found is not None and found[1].end < found[0].end
    assert check.after_status(found[0], status(active=False)) == (11, "next txid")
    assert check.after_status(found[0], status(active=True))[0] is None  # it may have read the WAL before us
    assert check.after_status(found[0], {"databases": []})[0] is None
    assert check.after_status(found[0], {"databases": [{"path": "/x"}]})[0] is None  # no `active`: unknown


async def test_other_salts_or_too_much_pending_wal_give_no_answer(db: Any) -> None:
    path, _ = db
    check = CoveringCheck(path)
    end = wal_end(path)
    assert end is not None
    write_ltx(check.ltx_dir, 10, b"othersal", 32, end.end)  # another WAL (restarted since)
    assert check.covered() is None
    write_ltx(check.ltx_dir, 11, end.salts, 32, 1)
    found = check.covered()
    assert found is not None
    far = type(found[0])(found[0].salts, 33 + MAX_PENDING_WAL + 1)
    assert check.after_status(far, status(active=False))[0] is None


async def test_a_status_reply_to_a_request_sent_before_the_caller_arrived_is_not_used(db: Any) -> None:
    path, _ = db
    check = CoveringCheck(path)
    sent: list[int] = []
    release = asyncio.Event()

    async def request(method: str, target: str, **_: Any) -> dict[str, Any]:
        sent.append(len(sent) + 1)
        number = len(sent)
        if number == 1:
            await release.wait()
        return {"n": number}

    first = asyncio.create_task(check._status(request))
    while not sent:
        await asyncio.sleep(0)
    later = [asyncio.create_task(check._status(request)) for _ in range(5)]  # arrive while #1 is in flight
    await asyncio.sleep(0.01)
    assert sent == [1]
    release.set()
    assert await first == {"n": 1}
    assert [await task for task in later] == [{"n": 2}] * 5  # one shared request, sent after they arrived
    assert sent == [1, 2]


def test_the_prompt_answer_is_the_newest_if_it_holds_the_wal_end_else_newest_plus_two(db: Any) -> None:
    path, conn = db
    check = CoveringCheck(path)
    end = wal_end(path)
    assert end is not None
    write_ltx(check.ltx_dir, 10, end.salts, 32, end.end - 32)
    assert check.promise() == (10, False)  # exists already: nothing to keep

    conn.execute("INSERT INTO t VALUES (2)")  # committed, in no LTX yet; a sync may be reading it right now
    assert check.promise() == (12, True)  # 11 may or may not hold it; 12 does (and must be made to exist)

    after = wal_end(path)
    assert after is not None
    write_ltx(check.ltx_dir, 11, end.salts, end.end, after.end - end.end)  # the sync that took it
    assert check.promise() == (11, False)
    assert check.outcomes == {"in the newest LTX": 2, "newest + 2": 1}


def test_no_prompt_answer_for_another_wal_or_too_much_pending(db: Any) -> None:
    path, conn = db
    check = CoveringCheck(path)
    end = wal_end(path)
    assert end is not None
    write_ltx(check.ltx_dir, 10, b"othersal", 32, end.end)  # another WAL (restarted since)
    assert check.promise() is None
    write_ltx(check.ltx_dir, 11, end.salts, 32, end.end - 32)
    conn.execute("INSERT INTO t VALUES (?)", (bytes(MAX_PENDING_WAL + 1),))  # more than a sync may split
    assert check.promise() is None


def past_newest(db: Any) -> tuple[CoveringCheck, WalEnd, WalEnd]:
    """A check whose newest LTX (10) holds the WAL as it was, then one commit after it: the WAL's end
    before and after that commit."""
    path, conn = db
    check = CoveringCheck(path)
    before = wal_end(path)
    assert before is not None
    write_ltx(check.ltx_dir, 10, before.salts, 32, before.end - 32)
    conn.execute("INSERT INTO t VALUES (2)")  # committed, in no LTX yet
    after = wal_end(path)
    assert after is not None
    return check, before, after


async def waiting_answer(check: CoveringCheck) -> asyncio.Task[tuple[int, bool] | None]:
    """The exact answer, asked and still waiting: no file holds the commit yet, and it asks Litestream nothing."""
    answer = asyncio.create_task(check.txid())
    await asyncio.sleep(0.02)
    assert not answer.done()
    return answer


async def test_the_exact_answer_waits_for_the_first_file_that_holds_the_commit(db: Any) -> None:
    check, before, after = past_newest(db)
    answer = await waiting_answer(check)
    write_ltx(check.ltx_dir, 11, before.salts, before.end, after.end - before.end)  # the next sync took it
    assert await asyncio.wait_for(answer, 1) == (11, False)  # it exists: nothing for the keeper
    assert check.outcomes["the next LTX"] == 1
    await check.aclose()


async def test_the_exact_answer_is_a_later_file_when_the_next_sync_read_the_wal_before_the_commit(db: Any) -> None:
    check, before, after = past_newest(db)
    answer = await waiting_answer(check)
    write_ltx(check.ltx_dir, 11, before.salts, 32, before.end - 32)  # it read the WAL before the commit
    await asyncio.sleep(0.02)
    assert not answer.done()  # 11 does not hold it: wait for 12
    write_ltx(check.ltx_dir, 12, before.salts, before.end, after.end - before.end)
    assert await asyncio.wait_for(answer, 1) == (12, False)
    assert check.outcomes["a later LTX"] == 1
    await check.aclose()


async def test_the_exact_answer_gives_up_on_a_file_of_another_wal(db: Any) -> None:
    check, _, _ = past_newest(db)
    answer = await waiting_answer(check)
    write_ltx(check.ltx_dir, 11, b"othersal", 32, 4096)  # the WAL restarted: the files cannot tell
    assert await asyncio.wait_for(answer, 1) is None  # then the engine asks POST /sync
    assert check.outcomes["the WAL started over"] == 1
    await check.aclose()


async def test_the_exact_answer_gives_up_when_no_file_lands(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    check, _, _ = past_newest(db)
    monkeypatch.setattr("forwarder.engines.litestream_position.LTX_WAIT", 0.05)
    assert await asyncio.wait_for(check.txid(), 1) is None  # then the engine asks POST /sync
    assert check.outcomes["no LTX came"] == 1
    await check.aclose()
