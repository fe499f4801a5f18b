"""Child processes: started with output to a log file, in their own session, stopped without orphans."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

__all__ = ["ManagedProcess", "STOP_TIMEOUT", "find_executable", "tail"]

STOP_TIMEOUT = 5.0
"""Seconds a process gets to exit after SIGTERM before SIGKILL (Litestream's shutdown sync can take > 1 s)."""


class ManagedProcess:
    """One child process, its output appended to `log_path`, in its own session.

    Its own session (and so its own process group) means Ctrl-C on the terminal reaches only the
    cluster runner, which then stops its children in order, and `stop()` signals the whole group,
    so nothing the child spawned outlives it.
    """

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self._process: asyncio.subprocess.Process | None = None
        self._log_offset = 0  # where this run's output starts in the (appended) log

    @property
    def pid(self) -> int | None:
        """The process id, None before `start()`."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited (negative: killed by that signal), else None."""
        return self._process.returncode if self._process is not None else None

    @property
    def running(self) -> bool:
        """True between `start()` and the process's exit, also in the moment before asyncio reaps a
        process killed from outside (kill -9), when its exit status is not known yet."""
        if self._process is None or self._process.returncode is not None:
            return False
        return not _exited(self._process.pid)

    async def start(self) -> None:
        """Start the process; its stdout and stderr go to the end of the log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    async def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the exit status; None if still running after `timeout` seconds."""
        if self._process is None:
            return None
        try:
            return await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            return None

    def signal(self, signum: int) -> None:
        """Send `signum` to the process's whole group (no-op once it has exited)."""
        if self.running:
            assert self._process is not None
            with suppress(ProcessLookupError):
                os.killpg(self._process.pid, signum)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the group, wait up to `timeout` seconds, then SIGKILL it. Safe to call twice."""
        if not self.running:
            if self._process is not None:
                await self._process.wait()  # reap it
            return
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)  # a paused (SIGSTOP) process only acts on SIGTERM once resumed
        if await self.wait(timeout) is None:
            self.signal(signal.SIGKILL)
            await self.wait()

    def tail(self, lines: int = 40) -> str:
        """The last `lines` lines this run of the process wrote to its log, for error messages."""
        return tail(self.log_path, lines, start=self._log_offset)


def tail(path: Path, lines: int = 40, *, start: int = 0) -> str:
    """The last `lines` lines of a text file from byte `start` on ('' if it does not exist)."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(start, file.tell() - 64 * 1024))
            data = file.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _exited(pid: int) -> bool:
    """Whether `pid` has exited but is not reaped yet (a zombie, on Linux), or is gone altogether."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] == b"Z"
    except FileNotFoundError:
        return True
    except OSError:
        return False  # no /proc (macOS): asyncio's exit status is all there is


def find_executable(name: str) -> str | None:
    """`name` installed next to this Python (a wheel's console script or binary) first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)
