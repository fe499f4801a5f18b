"""What another process sees of SQLite's locks on a file: the follower's view, for pool tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from forwarder.follower_lock import PENDING_BYTE

_TRY_WRITE_LOCK = f"""
import fcntl, sys
with open(sys.argv[1], "r+b") as f:
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 510, {PENDING_BYTE + 2})
    except OSError:
        sys.exit(1)
"""

_HOLD_PENDING = f"""
import fcntl, sys
with open(sys.argv[1], "r+b") as f:
    fcntl.lockf(f, fcntl.LOCK_EX, 1, {PENDING_BYTE})
    print("held", flush=True)
    sys.stdin.read()
"""


def free_for_the_follower(path: Path) -> bool:
    """Whether a follower could write `path` now: no process holds SQLite's SHARED lock on it."""
    return subprocess.run([sys.executable, "-c", _TRY_WRITE_LOCK, str(path)], timeout=30).returncode == 0


def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@contextmanager
def follower_asking_for(path: Path) -> Iterator[None]:
    """Another process holding SQLite's PENDING byte: what `litestream restore -f` does before it writes."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_PENDING, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"held\n"
        yield
    finally:
        child.communicate(timeout=10)
