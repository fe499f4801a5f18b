"""`forwarder dev` runs uvicorn on uvloop and httptools when installed (else h11), unless told otherwise."""

from __future__ import annotations

import importlib.util

import pytest

from forwarder.dev.processes import fast_server_options


def test_uvloop_and_httptools_are_named_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert fast_server_options({}) == ["--loop", "uvloop", "--http", "httptools"]


def test_without_uvicorn_standard_the_parser_is_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert fast_server_options({}) == ["--http", "h11"]


def test_uvicorn_environment_variables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert fast_server_options({"UVICORN_LOOP": "asyncio"}) == []
    assert fast_server_options({"UVICORN_HTTP": "h11"}) == []
