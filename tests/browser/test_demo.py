"""The demo in a real browser: Debian's Chromium driven by Playwright, against a real 3-node cluster.

Each page is pinned to a region by opening that replica's own URL (every node is its own uvicorn
on its own port). Screenshots go to `test-artifacts/browser/` at the repository root.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, ViewportSize, async_playwright, expect

from forwarder.dev import Cluster, NodeProcess

from ..e2e.conftest import running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
VIEWPORT: ViewportSize = {"width": 1000, "height": 760}

AT_ONCE_MS = 1500
"""The poster's own page: the ack waits for the local replica, then the render follows at once."""
ELSEWHERE_MS = 3000
"""Another region's page: its replica must receive the write first ("within a couple of seconds")."""


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """The example app on a primary in fra and replicas in ams and syd. Every process stopped at the end."""
    async with running_cluster(
        app="example_app:app", data_dir=tmp_path_factory.mktemp("cluster"), replicas=2, regions=["fra", "ams", "syd"]
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless. Never a downloaded browser."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} does not exist: the browser tests use Debian's Chromium, never a downloaded one; "
            "install it with `apt-get install chromium` (`scripts/install --browser` does this when run as root)"
        )
    async with async_playwright() as playwright:
        with anyio.fail_after(30):
            launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            with anyio.CancelScope(shield=True), anyio.fail_after(30):
                await launched.close()


def replica_in(cluster: Cluster, region: str) -> NodeProcess:
    return next(node for node in cluster.replicas if node.region == region)


class Board:
    """One browser page on one node, and the uncaught script errors it raised."""

    def __init__(self, page: Page, node: NodeProcess) -> None:
        self.page = page
        self.node = node
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def message(self, text: str) -> Locator:
        return self.page.locator(".message", has_text=text)

    async def post(self, author: str, text: str) -> None:
        await self.page.fill("#author", author)
        await self.page.fill("#text", text)
        await self.page.click("#send")

    async def shows_within(self, text: str, timeout_ms: float) -> None:
        """Wait until a message with `text` is visible; fail after `timeout_ms`."""
        await expect(self.message(text)).to_be_visible(timeout=timeout_ms)

    async def is_live(self, connects: int = 1, timeout_ms: float = 10_000) -> None:
        body = self.page.locator("body")
        await expect(body).to_have_attribute("data-connection", "live", timeout=timeout_ms)
        await expect(body).to_have_attribute("data-connects", str(connects), timeout=timeout_ms)
        await expect(self.page.locator("#connection")).to_have_text("live")

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.page.screenshot(path=path)
        return path


async def open_board(browser: Browser, node: NodeProcess, *, javascript: bool = True) -> Board:
    context = await browser.new_context(viewport=VIEWPORT, java_script_enabled=javascript)
    board = Board(await context.new_page(), node)
    await board.page.goto(f"{node.url}/")
    if javascript:
        await board.is_live()
    return board


async def close(*boards: Board) -> None:
    for board in boards:
        await board.page.context.close()
    assert [error for board in boards for error in board.errors] == []


async def test_a_message_posted_in_one_region_appears_in_the_other(cluster: Cluster, browser: Browser) -> None:
    ams, syd = replica_in(cluster, "ams"), replica_in(cluster, "syd")
    with anyio.fail_after(60):
        async with httpx.AsyncClient(timeout=10) as client:
            for author, text in [
                ("Grace (fra)", "Morning all. The primary lives in Frankfurt; every write lands here first."),
                ("Linus (syd)", "Reading from the Sydney replica. Your posts show up here as soon as it has them."),
            ]:
                response = await client.post(
                    f"{cluster.primary.url}/api/messages", json={"author": author, "text": text}
                )
                assert response.status_code == 201, response.text
        poster, reader = await open_board(browser, ams), await open_board(browser, syd)
        try:
            for board in (poster, reader):
                status = board.page.locator('[data-slot="status"]')
                await expect(status).to_have_attribute("data-node", board.node.id)
                await expect(status).to_have_attribute("data-region", board.node.region)
                await expect(status.locator(".stat-role .stat-value")).to_have_text("replica")
                await expect(status.locator(".stat-txid .stat-value")).to_have_text(re.compile(r"^[0-9a-f]{16}$"))
                await expect(status.locator(".stat-lag .stat-value")).to_have_text(re.compile(r"^\d+(\.\d)? m?s$"))

            text = f"Hello from Amsterdam! ({uuid.uuid4().hex[:6]})"
            await poster.post("Ada (ams)", text)
            posted = time.monotonic()
            await poster.shows_within(text, AT_ONCE_MS)
            at_once = (time.monotonic() - posted) * 1000
            await reader.shows_within(text, ELSEWHERE_MS)
            elsewhere = (time.monotonic() - posted) * 1000
            print(f"\nposted on {ams.id}: visible there after {at_once:.0f} ms, on {syd.id} after {elsewhere:.0f} ms")
            notice = poster.page.locator("#notice")
            await expect(notice).to_contain_text(re.compile(r"is visible here at txid [0-9a-f]{16}"))
            await expect(poster.page.locator("#text")).to_have_value("")
            await expect(poster.message(text)).to_have_class(re.compile(r"\bis-mine\b"))
            # The ack's txid is one this page's node already held.
            ack_txid = await notice.get_attribute("data-txid")
            shown_txid = await poster.page.locator('[data-slot="status"]').get_attribute("data-txid")
            assert ack_txid is not None and shown_txid is not None and shown_txid >= ack_txid

            reply = f"G'day Ada, got it in Sydney. ({uuid.uuid4().hex[:6]})"
            await reader.post("Linus (syd)", reply)
            await reader.shows_within(reply, AT_ONCE_MS)
            await poster.shows_within(reply, ELSEWHERE_MS)
            # Newest first on both pages.
            for board in (poster, reader):
                first_two = await board.page.locator(".message .text").all_inner_texts()
                assert first_two[:2] == [reply, text]

            await poster.screenshot("ams-poster")
            await reader.screenshot("syd-reader")
        finally:
            await close(poster, reader)


async def test_the_page_survives_a_replica_restart(cluster: Cluster, browser: Browser) -> None:
    ams, syd = replica_in(cluster, "ams"), replica_in(cluster, "syd")
    with anyio.fail_after(60):
        writer, survivor = await open_board(browser, ams), await open_board(browser, syd)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(cluster.restart_node, syd.id)
                body = survivor.page.locator("body")
                await expect(body).to_have_attribute("data-connection", "reconnecting", timeout=10_000)
                await expect(survivor.page.locator("#connection")).to_have_text("reconnecting…")
                await survivor.screenshot("syd-reconnecting")
            # Back on the same port with a freshly restored replica: the page reconnects by itself.
            await survivor.is_live(connects=2, timeout_ms=15_000)

            text = f"Still there, Sydney? ({uuid.uuid4().hex[:6]})"
            await writer.post("Ada (ams)", text)
            await writer.shows_within(text, AT_ONCE_MS)
            await survivor.shows_within(text, ELSEWHERE_MS)
            answer = f"Back after a restart. ({uuid.uuid4().hex[:6]})"
            await survivor.post("Linus (syd)", answer)
            await survivor.shows_within(answer, AT_ONCE_MS)
            await writer.shows_within(answer, ELSEWHERE_MS)
            await survivor.screenshot("syd-after-restart")
        finally:
            await close(writer, survivor)


async def test_errors_are_shown_and_the_page_keeps_working(cluster: Cluster, browser: Browser) -> None:
    ams = replica_in(cluster, "ams")
    with anyio.fail_after(60):
        board = await open_board(browser, ams)
        try:
            await cluster.stop_node(cluster.primary.id)
            try:
                await board.post("Ada (ams)", "Is anyone writing?")
                notice = board.page.locator("#notice")
                await expect(notice).to_have_class(re.compile(r"\bis-error\b"), timeout=10_000)
                await expect(notice).to_contain_text("cannot connect to the primary")
                await expect(board.page.locator("#send")).to_be_enabled()
                await expect(board.page.locator("#text")).to_have_value("Is anyone writing?")
                await board.screenshot("ams-primary-down")
            finally:
                with anyio.CancelScope(shield=True), anyio.fail_after(30):
                    await cluster.start_node(cluster.primary.id)
            text = f"The primary is back. ({uuid.uuid4().hex[:6]})"
            await board.post("Ada (ams)", text)
            await board.shows_within(text, AT_ONCE_MS)
        finally:
            await close(board)


async def test_the_board_works_without_javascript(cluster: Cluster, browser: Browser) -> None:
    syd = replica_in(cluster, "syd")
    with anyio.fail_after(60):
        board = await open_board(browser, syd, javascript=False)
        try:
            text = f"Posted with a plain form. ({uuid.uuid4().hex[:6]})"
            await board.post("Plain (syd)", text)
            await board.page.wait_for_url(f"{syd.url}/")
            # The forwarded POST answered only once this replica held the message; the reload shows it.
            await expect(board.message(text)).to_be_visible(timeout=1000)
            await expect(board.page.locator('[data-slot="status"]')).to_have_attribute("data-node", syd.id)
            # No script, no socket: no connection badge either.
            await expect(board.page.locator("#connection")).to_be_hidden()
            await board.screenshot("syd-without-javascript")
        finally:
            await close(board)
