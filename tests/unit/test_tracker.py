from __future__ import annotations

import asyncio

import anyio
import pytest

from forwarder import ReplicationTimeout, Tracker, Txid

pytestmark = pytest.mark.anyio


async def test_returns_at_once_when_already_reached() -> None:
    tracker = Tracker(Txid(5))
    assert await tracker.wait_for(Txid(5), timeout=0) == 5
    assert await tracker.wait_for(Txid(1), timeout=0) == 5
    assert tracker.waiting == 0


async def test_wakes_exactly_the_reached_waiters() -> None:
    tracker = Tracker()
    woken: list[int] = []

    async def wait(txid: int) -> None:
        await tracker.wait_for(Txid(txid), timeout=5)
        woken.append(txid)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for txid in (3, 1, 2, 5):
                tg.start_soon(wait, txid)
            await anyio.wait_all_tasks_blocked()
            assert tracker.waiting == 4
            tracker.advance(Txid(2))
            await anyio.wait_all_tasks_blocked()
            assert sorted(woken) == [1, 2]
            assert tracker.waiting == 2
            tracker.advance(Txid(10))
    assert sorted(woken) == [1, 2, 3, 5]
    assert tracker.waiting == 0


async def test_ignores_positions_going_backwards_but_reset_moves_them() -> None:
    tracker = Tracker(Txid(7))
    tracker.advance(Txid(3))
    assert tracker.position == 7
    tracker.reset(Txid(3))
    assert tracker.position == 3


async def test_timeout_raises_with_positions_and_leaves_nothing_behind() -> None:
    tracker = Tracker(Txid(1))
    with pytest.raises(ReplicationTimeout) as caught:
        await tracker.wait_for(Txid(9), timeout=0.01)
    assert caught.value.txid == 9 and caught.value.position == 1
    assert not caught.value.committed
    assert "0000000000000009" in str(caught.value)
    assert tracker.waiting == 0
    tracker.advance(Txid(20))  # the abandoned entry is popped without error
    assert tracker.waiting == 0


async def test_cancellation_removes_the_waiter() -> None:
    tracker = Tracker()
    task = asyncio.create_task(tracker.wait_for(Txid(4), timeout=None))
    await asyncio.sleep(0)
    assert tracker.waiting == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tracker.waiting == 0
    tracker.advance(Txid(4))
    assert tracker.waiting == 0


async def test_advance_between_check_and_wait_is_not_lost() -> None:
    # The waiter registers synchronously with its check, so an advance scheduled right after
    # (before the waiter ever suspends) still wakes it.
    tracker = Tracker()
    loop = asyncio.get_running_loop()
    loop.call_soon(tracker.advance, Txid(1))
    with anyio.fail_after(1):
        assert await tracker.wait_for(Txid(1), timeout=None) == 1


async def test_many_timeouts_do_not_grow_the_heap_without_bound() -> None:
    tracker = Tracker()
    for _ in range(3):
        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(_swallow_timeout, tracker, Txid(1000 + i))
    assert tracker.waiting == 0
    assert tracker._registered < 200


async def _swallow_timeout(tracker: Tracker, txid: Txid) -> None:
    with pytest.raises(ReplicationTimeout):
        await tracker.wait_for(txid, timeout=0.001)


async def test_one_advance_wakes_ten_thousand_waiters() -> None:
    tracker = Tracker()
    with anyio.fail_after(10):
        tasks = [asyncio.create_task(tracker.wait_for(Txid(1 + i % 50), timeout=None)) for i in range(10_000)]
        await asyncio.sleep(0)
        assert tracker.waiting == 10_000
        tracker.advance(Txid(50))
        results = await asyncio.gather(*tasks)
    assert set(results) == {50}
    assert tracker.waiting == 0


def test_committed_timeout_carries_the_result() -> None:
    error = ReplicationTimeout(5, 3, 1.0).with_result({"id": 1})
    assert error.committed and error.result == {"id": 1}
    assert "committed on the primary" in str(error)


async def test_one_shared_deadline_timer_expires_each_waiter_at_its_own_time() -> None:
    tracker = Tracker()
    loop = asyncio.get_running_loop()
    ended: dict[str, float] = {}

    async def wait(name: str, txid: int, timeout: float) -> None:
        started = loop.time()
        try:
            await tracker.wait_for(Txid(txid), timeout=timeout)
            ended[name] = -1.0
        except ReplicationTimeout:
            ended[name] = loop.time() - started

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "long", 9, 1.5)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(wait, "short", 9, 0.6)  # an earlier deadline re-arms the one timer
            tg.start_soon(wait, "woken", 2, 0.5)
            cancelled = asyncio.create_task(tracker.wait_for(Txid(9), timeout=0.3))
            await anyio.wait_all_tasks_blocked()
            assert tracker._timer is not None and len(tracker._deadlines) == 4
            cancelled.cancel()  # the earliest deadline's waiter goes away: the others still expire
            tracker.advance(Txid(2))
    assert ended["woken"] == -1.0
    assert 0.59 <= ended["short"] < 1.4  # long enough apart for a loaded machine
    assert 1.49 <= ended["long"] < 4.0
    assert tracker.waiting == 0
    assert tracker._deadlines == [] and tracker._timer is None  # nothing left behind


async def test_waking_every_waiter_drops_their_deadlines_and_the_timer() -> None:
    tracker = Tracker()
    tasks = [asyncio.create_task(tracker.wait_for(Txid(1 + i % 3), timeout=30)) for i in range(100)]
    await asyncio.sleep(0)
    assert len(tracker._deadlines) == 100 and tracker._timer is not None
    tracker.advance(Txid(3))
    await asyncio.gather(*tasks)
    assert tracker._deadlines == [] and tracker._timer is None
