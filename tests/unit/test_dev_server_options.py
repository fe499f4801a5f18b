"""`forwarder dev` runs uvicorn on uvloop when installed, with the h11 parser, unless told otherwise."""

from __future__ import annotations

import importlib.util

import pytest

from forwarder.dev.processes import fast_server_options


def test_uvloop_is_named_when_installed_and_the_parser_is_always_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert fast_server_options({}) == ["--loop", "uvloop", "--http", "h11"]


def test_without_uvloop_only_the_parser_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert fast_server_options({}) == ["--http", "h11"]


def test_uvicorn_environment_variables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert fast_server_options({"UVICORN_LOOP": "asyncio"}) == []
    assert fast_server_options({"UVICORN_HTTP": "h11"}) == []
