"""When a store holds so many L1 and L2 files that every idle follower poll is costly."""

from __future__ import annotations

from collections import Counter
from typing import Any

from forwarder.replica.store_files import CROWDED, crowded, files_by_level


def test_files_are_counted_by_level_and_malformed_entries_are_skipped() -> None:
    files: list[dict[str, Any]] = [{"level": 0}, {"level": 1}, {"level": 1}, {"level": 9}, {"level": "1"}, {}]
    assert files_by_level(files) == Counter({0: 1, 1: 2, 9: 1})


def test_more_l1_and_l2_files_than_the_limit_is_a_warning_that_names_the_fix() -> None:
    assert crowded(Counter({1: CROWDED - 10, 2: 10, 0: 5000})) is None  # L0 drains by itself: not counted
    warning = crowded(Counter({1: 17_280, 2: 1_440}))
    assert warning is not None
    assert "17280 L1 and 1440 L2" in warning and "snapshot: {interval: 1h, retention: 1h}" in warning
    assert crowded(Counter({1: 11}), limit=10) is not None
