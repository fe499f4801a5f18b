"""Small helpers shared by the benchmarks: percentiles, tables, results files."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

LATENCY = ["n", "p50_ms", "p99_ms", "max_ms"]
"""The columns of a latency summary (`summary_ms`), after the row's name column."""


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))  # nearest rank: the smallest value with q % at or below it
    return ordered[max(0, min(len(ordered), rank) - 1)]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    """n, p50, p99 and max of durations given in seconds, reported in milliseconds."""
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 4),
        "p99_ms": round(percentile(ms, 99), 4),
        "max_ms": round(max(ms), 4) if ms else float("nan"),
    }


def run_median(runs: Mapping[str, Sequence[Mapping[str, Any]]], setup: str, key: str) -> float:
    """The median of `key` over the runs of `setup` (wrk results: rps, p50_us, ...)."""
    return float(statistics.median(run[key] for run in runs[setup]))


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of `rows`, one column per key in `columns`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def report(name: str, result: dict[str, Any], rows: list[dict[str, Any]], columns: list[str]) -> None:
    """What a benchmark run on its own does at the end: write `results/<name>.json`, print the table."""
    path = write_results(name, result)
    print(table(rows, columns))
    print(f"written to {path}")
