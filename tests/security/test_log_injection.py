"""Finding 10: nothing from a request can forge a log line."""

from __future__ import annotations

import logging

import anyio
import pytest

from forwarder.logsafe import clean
from forwarder.policy import RoutingPolicy

from ..unit.asgi import call, http_scope, status_of
from .harness import nodes

pytestmark = pytest.mark.anyio

FORGED = "/api/write\nINFO forwarder.middleware: forged line\r\x1b[2J\u2028"


def test_clean_escapes_control_characters() -> None:
    assert clean("a\nb\r\x00\x1b\x7f\x85\u2028\\") == "a\\x0ab\\x0d\\x00\\x1b\\x7f\\x85\\u2028\\\\"
    assert clean(b"x\ny") == "x\\x0ay" and clean("plain /path") == "plain /path"
    assert clean("x" * 500).endswith("...") and len(clean("x" * 500)) == 303


@pytest.mark.parametrize("mode", ["proxy", "replay"])
async def test_a_newline_in_the_path_does_not_forge_a_log_line(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="forwarder")
    scope = http_scope("POST", FORGED)
    scope["raw_path"] = b"/api/write%0AINFO%20forwarder.middleware:%20forged%20line%0D%1B%5B2J%E2%80%A8"
    spoof = [(b"forwarder-forwarded-by", b"x\ny"), (b"fly-replay-failed", b"a\nb")]
    async with nodes(policy=RoutingPolicy(mode=mode)) as n:  # type: ignore[arg-type]
        with anyio.fail_after(5):
            sent = await call(n.replica_app, {**scope, "headers": spoof}, b"x")
            bad = http_scope("POST\n", "/x")
            bad["raw_path"] = b"http://h/\n"
            await call(n.replica_app, bad)
    assert status_of(sent) in (404, 409)
    messages = [record.getMessage() for record in caplog.records]
    assert any("forged line" in m for m in messages), messages  # the path was logged ...
    for message in messages:
        assert not any(c in message for c in "\n\r\x1b\u2028"), message  # ... on one line, escaped
