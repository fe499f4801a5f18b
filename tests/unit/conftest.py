from __future__ import annotations

import pytest

from . import nodes


@pytest.fixture(params=["http", "channel"])
def over_http_and_channel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test of two in-process nodes twice: the replica reaching the primary over HTTP, and over
    the node channel (`pytestmark = pytest.mark.usefixtures("over_http_and_channel")`)."""
    kind = str(request.param)
    monkeypatch.setattr(nodes, "CHANNEL_BY_DEFAULT", kind == "channel")
    return kind
