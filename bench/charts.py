"""PNG charts of a benchmark run, for the README: `bench/results/*.png` from `latest.json`.

.venv/bin/python -m bench.charts
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

from bench.stats import RESULTS


def wake_chart(wake: dict[str, Any], path: Path) -> None:
    """Distribution of catch-up wake latency per mechanism (log scale: 0.05 ms to 50 ms)."""
    rows = [row for row in wake["wake"] if row.get("samples_ms")]
    fig, ax = plt.subplots(figsize=(9, 3.8), dpi=110)
    ax.boxplot(
        [row["samples_ms"] for row in rows],
        vert=False,
        whis=(1, 99),
        showfliers=False,
        tick_labels=[row["mechanism"] for row in rows],
    )
    ax.set_xscale("log")
    ax.set_xlabel("signal to coroutine resumed (ms, log scale; box p25-p75, whiskers p1-p99)")
    ax.axvline(1.0, color="tab:red", linestyle=":", linewidth=1)
    ax.text(1.08, 0.02, "1 ms target (p99)", color="tab:red", fontsize=8, transform=ax.get_xaxis_transform())
    ax.invert_yaxis()
    ax.set_title("Catch-up wake: our tracker against per-waiter polling")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_chart(forwarded: dict[str, Any], path: Path) -> None:
    """Median latency of one write, stacked by part: direct, bare hop, proxied through a replica."""
    p50 = {row["measure"]: row["p50_ms"] for row in forwarded["rows"]}
    direct_rest = p50["direct: total"] - p50["direct: handler"] - p50["direct: commit_position"]
    bars = {
        "direct on the primary": [p50["direct: handler"], p50["direct: commit_position"], 0, direct_rest],
        "through a bare proxy": [
            p50["direct: handler"],
            p50["direct: commit_position"],
            0,
            p50["bare hop (baseline proxy): total"] - p50["direct: handler"] - p50["direct: commit_position"],
        ],
        "forwarded by a replica": [
            p50["direct: handler"],
            p50["direct: commit_position"],
            p50["proxy: replication wait (both waits - direct commit_position)"],
            p50["proxy: hop (total - handler - commit - replica's wait)"],
        ],
    }
    parts = ["handler", "commit_position (the txid)", "replication wait", "HTTP (client, hops)"]
    fig, ax = plt.subplots(figsize=(10, 2.8), dpi=110)
    names = list(bars)
    left = [0.0] * len(names)
    for i, part in enumerate(parts):
        widths = [bars[name][i] for name in names]
        ax.barh(names, widths, left=left, label=part)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlabel("median latency of one write (ms)")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not over them
    ax.set_title("One write, by part (medians)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def throughput_chart(throughput: dict[str, Any], path: Path) -> None:
    """Writes per second, direct on the primary against forwarded from two replicas."""
    rows = throughput["rows"]
    labels = [str(row["connections per source"]) for row in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.bar([i - 0.2 for i in x], [row["direct req/s"] for row in rows], width=0.4, label="direct on the primary")
    ax.bar([i + 0.2 for i in x], [row["forwarded req/s"] for row in rows], width=0.4, label="forwarded by 2 replicas")
    ax.set_xticks(list(x), labels)
    ax.set_xlabel("connections per source")
    ax.set_ylabel("writes per second")
    ax.legend(fontsize=8)
    ax.set_title("Write throughput, every node on one 2-core machine")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def draw(results: dict[str, Any], directory: Path = RESULTS) -> list[Path]:
    """Draw every chart the results hold; return the files written."""
    written = []
    for key, name, draw_one in (
        ("wake", "wake.png", wake_chart),
        ("forwarded_write", "forwarded-write.png", write_chart),
        ("write_throughput", "write-throughput.png", throughput_chart),
    ):
        if key in results:
            draw_one(results[key], directory / name)
            written.append(directory / name)
    return written


if __name__ == "__main__":
    for path in draw(json.loads((RESULTS / "latest.json").read_text())):
        print(f"written {path}")
