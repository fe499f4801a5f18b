from __future__ import annotations

import inspect
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from forwarder.dev.s3server import LocalS3Server
from tests.litestream_guard import launch_problems


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # uvicorn and websockets are asyncio-only.
    return "asyncio"


@pytest.fixture(autouse=True)
def clean_environ() -> Iterator[None]:
    """Tests never see FORWARDER_* or FLY_* variables of the shell that runs them."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("FORWARDER_", "FLY_")) or name == "PRIMARY_REGION":
            del os.environ[name]
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def litestream_launches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[list[str], list[str]]]]:
    """Every Litestream process a test starts, by any path (`ManagedProcess`, asyncio, subprocess),
    goes through `subprocess.Popen`: each is checked against `tests/litestream_guard.py` as it starts,
    refused if it breaks the rule, and the test fails at teardown even if the refusal was swallowed.

    Yields the list of (argv, problems) of every Litestream start; a test that provokes a bad start
    on purpose removes its entry."""
    launches: list[tuple[list[str], list[str]]] = []
    original = subprocess.Popen.__init__
    signature = inspect.signature(original)

    def checked_init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        argv = bound.arguments["args"]
        argv = [str(a) for a in argv] if isinstance(argv, (list, tuple)) else [str(argv)]
        problems = launch_problems(argv, bound.arguments.get("env"))
        if argv and Path(argv[0]).name == "litestream":
            launches.append((argv, problems))
        if problems:
            raise AssertionError(f"refused to start {argv}: {'; '.join(problems)}")
        original(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", checked_init)
    yield launches
    bad = [(argv, problems) for argv, problems in launches if problems]
    assert bad == [], f"Litestream started against the rule in tests/litestream_guard.py: {bad}"


@pytest.fixture
async def s3_server(tmp_path: Path) -> AsyncIterator[LocalS3Server]:
    """moto's S3-compatible server on a free loopback port, answering HTTP before the test starts, always stopped
    (resumed first, for a test that SIGSTOPs it)."""
    server = LocalS3Server(log_path=tmp_path / "moto.log")
    try:
        with anyio.fail_after(30):
            await server.start()
        yield server
    finally:
        with anyio.CancelScope(shield=True), anyio.fail_after(30):
            server.process.signal(signal.SIGCONT)
            await server.stop()
