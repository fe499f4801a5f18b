"""docs/architecture.md names every module of `forwarder/` once, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_architecture_doc_lists_every_module_once() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    listed = re.findall(r"^\| `(forwarder/[\w/]+\.py)` \| \S", text, flags=re.MULTILINE)
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "forwarder").rglob("*.py"))
    assert sorted(listed) == sorted(set(listed)), "a module is listed twice"
    assert sorted(listed) == modules, {"missing": set(modules) - set(listed), "gone": set(listed) - set(modules)}


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "forwarder").rglob("*.py")
        if (n := len(p.read_text().splitlines())) >= 400
    }
    assert long == {}
