"""`QuickPoll`: whether a descriptor has data waiting, with libc's poll and with the fallback."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from forwarder import quick_poll
from forwarder.quick_poll import QuickPoll


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


@pytest.mark.parametrize("libc", [True, False], ids=["libc poll", "select.poll fallback"])
def test_ready_says_whether_something_waits(pipe: tuple[int, int], libc: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not libc:
        monkeypatch.setattr(quick_poll, "_POLL", None)
    else:
        assert quick_poll._POLL is not None  # Linux: libc's poll is what the hot path uses
    read_end, write_end = pipe
    poll = QuickPoll(read_end)
    assert not poll.ready()
    os.write(write_end, b"x")
    assert poll.ready()
    assert poll.ready()  # still there until read
    os.read(read_end, 1)
    assert not poll.ready()
