"""Child processes of the local cluster: start with output to a log file, stop without orphans."""

from __future__ import annotations

import socket

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
