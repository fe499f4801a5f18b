"""forwarder's log lines without any logging set-up, with the app's own set-up, and turned off."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from forwarder.logs import PerRequestLine

SCRIPT = """
import asyncio, logging
from forwarder import Forwarder, MemoryEngine, MemoryLog, Role, Topology
{setup}
async def main():
    forwarder = Forwarder(
        engine=MemoryEngine(MemoryLog(), Role.PRIMARY),
        topology=Topology("node-1", "fra", Role.PRIMARY),
        log_level={level!r},
    )
    async with forwarder:
        logging.getLogger("forwarder.middleware").info("forwarded POST /x to primary")
asyncio.run(main())
"""


def run(level: str, setup: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(level=level, setup=setup)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr


def test_info_lines_show_without_any_logging_setup() -> None:
    err = run("info")
    assert "INFO:     forwarder.middleware: forwarded POST /x to primary" in err
    assert "INFO:     forwarder: forwarder node node-1 (fra) started as primary" in err


def test_off_keeps_them_out() -> None:
    assert "forwarded POST" not in run("off")


BASIC = 'logging.basicConfig(level=logging.INFO, format="app %(name)s %(message)s")'


def test_an_app_that_configures_logging_gets_each_line_once_through_its_own_handlers() -> None:
    err = run("info", BASIC)
    assert err.count("forwarded POST /x to primary") == 1
    assert "app forwarder.middleware forwarded POST /x to primary" in err


@pytest.mark.parametrize("level", ["warning", "off"])
def test_the_level_quiets_forwarder_under_the_apps_logging_too(level: str) -> None:
    assert "forwarded POST" not in run(level, BASIC)


def test_a_level_the_app_set_on_the_forwarder_logger_wins() -> None:
    err = run("warning", BASIC + '\nlogging.getLogger("forwarder").setLevel(logging.INFO)')
    assert err.count("forwarded POST /x to primary") == 1


def _both(line: PerRequestLine, logger: logging.Logger, n: int) -> None:
    line("forwarded %s number %d", "POST /x", n)
    logger.info("forwarded %s number %d", "POST /x", n)


def test_a_per_request_line_is_the_record_logger_info_makes(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("forwarder.test_per_request_line")
    line = PerRequestLine(logger)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for n in range(3):  # the first finds the caller, the others reuse it
            _both(line, logger, n)
    records = caplog.records
    assert len(records) == 6
    for ours, theirs in zip(records[::2], records[1::2], strict=True):
        assert ours.getMessage() == theirs.getMessage()
        assert (ours.pathname, ours.funcName, ours.levelno, ours.name) == (
            theirs.pathname,
            theirs.funcName,
            theirs.levelno,
            theirs.name,
        )
        assert ours.lineno == theirs.lineno - 1  # the line just above logger.info's
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=logger.name):
        line("not %s", "shown")
    assert caplog.records == []
    logger.addFilter(lambda record: "keep" in record.getMessage())
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            line("dropped by the logger's filter")
            line("keep this one")
    finally:
        logger.filters.clear()
    assert [r.getMessage() for r in caplog.records] == ["keep this one"]
