"""The read-path app (`bench.apps.read_app`, wrapped or not as `BENCH_WRAPPED` says) with a call counter.

`SIGUSR1` starts counting every Python function call and every call of a C function in the event
loop's thread, where the middleware runs (`sys.setprofile`; a sync handler's worker thread is not
counted); `SIGUSR2` stops and writes the counts to `BENCH_CALLS_OUT` as JSON rows
`[where, function, calls]`, most called first. `bench.read_instructions` uses it to say which of the
middleware's functions a request runs, next to the instructions it costs.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from bench.apps.read_app import app

__all__ = ["app"]

_counts: collections.Counter[tuple[str, str]] = collections.Counter()


def _where(filename: str) -> str:
    """A code object's file, relative to site-packages or the repository: short and the same on every machine."""
    for marker in ("site-packages/", f"{Path(__file__).parent.parent.parent}/"):
        if marker in filename:
            return filename.rsplit(marker, 1)[1]
    return filename


def _profile(frame: FrameType, event: str, arg: Any) -> None:
    if event == "call":
        _counts[(_where(frame.f_code.co_filename), frame.f_code.co_name)] += 1
    elif event == "c_call":
        _counts[("C", getattr(arg, "__qualname__", repr(arg)))] += 1


def _start(signum: int, frame: FrameType | None) -> None:
    _counts.clear()
    sys.setprofile(_profile)


def _stop(signum: int, frame: FrameType | None) -> None:
    sys.setprofile(None)
    rows = [[where, name, calls] for (where, name), calls in _counts.most_common()]
    Path(os.environ["BENCH_CALLS_OUT"]).write_text(json.dumps(rows))


signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _stop)
