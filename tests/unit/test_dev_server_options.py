"""`forwarder dev` runs uvicorn on uvloop + httptools when both are installed, unless told otherwise."""

from __future__ import annotations

import importlib.util

import pytest

from forwarder.dev.processes import fast_server_options


def test_uvloop_and_httptools_are_named_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert fast_server_options({}) == ["--loop", "uvloop", "--http", "httptools"]


def test_nothing_is_named_when_one_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "httptools" else object())
    assert fast_server_options({}) == []


def test_uvicorn_environment_variables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert fast_server_options({"UVICORN_LOOP": "asyncio"}) == []
    assert fast_server_options({"UVICORN_HTTP": "h11"}) == []
