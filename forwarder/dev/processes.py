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
    """uvicorn options: uvloop when installed (`forwarder[server]`), and always the h11 parser.

    h11, not httptools, although `forwarder[server]` installs both and uvicorn's `auto` would pick
    httptools: httptools turns an absolute-form request target (`GET http://elsewhere/x`) into a
    plain path before the app sees it, so the middleware's refusal of such targets
    (tests/security/test_lag_poisoning.py) would not fire. `UVICORN_LOOP` / `UVICORN_HTTP` in the
    node's environment win (that is how the benchmarks measure other stacks).
    """
    if "UVICORN_LOOP" in env or "UVICORN_HTTP" in env:
        return []
    loop = ["--loop", "uvloop"] if importlib.util.find_spec("uvloop") is not None else []
    return [*loop, "--http", "h11"]
