"""Child processes of the local cluster: start with output to a log file, stop without orphans."""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Mapping

from .._process import STOP_TIMEOUT, ManagedProcess, tail
from ..exceptions import ForwarderError

__all__ = ["STOP_TIMEOUT", "ClusterError", "ManagedProcess", "free_port", "tail"]


class ClusterError(ForwarderError):
    """The local cluster could not start or restart a node; the message names the process and its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def fast_server_options(env: Mapping[str, str]) -> list[str]:
    """uvicorn options for uvloop and httptools when both are installed (`forwarder[server]`).

    uvicorn's `auto` already prefers them; naming them makes a missing one an error rather than a
    silent fall back to the slower asyncio loop and h11. `UVICORN_LOOP` / `UVICORN_HTTP` in the
    node's environment win (that is how the benchmarks measure without them).
    """
    if "UVICORN_LOOP" in env or "UVICORN_HTTP" in env:
        return []
    if importlib.util.find_spec("uvloop") is None or importlib.util.find_spec("httptools") is None:
        return []
    return ["--loop", "uvloop", "--http", "httptools"]
