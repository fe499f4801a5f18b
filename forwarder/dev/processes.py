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
    """uvicorn options: uvloop and the httptools parser when installed (`forwarder[server]`), else h11.

    What `uvicorn app:app` picks by itself with `uvicorn[standard]`, said out loud so every node
    log shows it. httptools costs a request about 390,000 instructions fewer than h11
    (bench/read_instructions.py: a replica's `/hello` 260k against 650k). It hands the app an
    absolute-form target (`GET http://elsewhere/x`) already reduced to its path, as RFC 9112
    section 3.2.2 has servers accept it; under h11 the middleware refuses such a target with 400.
    Either way nothing goes anywhere but the primary (tests/security/test_target_ssrf.py).
    `UVICORN_LOOP` / `UVICORN_HTTP` in the node's environment win (that is how the benchmarks
    and the h11 security tests pick another stack).
    """
    if "UVICORN_LOOP" in env or "UVICORN_HTTP" in env:
        return []
    loop = ["--loop", "uvloop"] if importlib.util.find_spec("uvloop") is not None else []
    http = ["--http", "httptools"] if importlib.util.find_spec("httptools") is not None else ["--http", "h11"]
    return [*loop, *http]
