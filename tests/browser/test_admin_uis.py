"""The Django admin and Datasette in a real browser, on a replica of a real 3-node cluster.

Debian's Chromium, driven by Playwright. Each page is opened on a replica's own URL: the form
posts are forwarded to the primary, and the next page load, served by that replica, shows the
change. Screenshots go to `test-artifacts/browser/`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
from playwright.async_api import Browser, Page, expect

from forwarder.dev import Cluster

from ..e2e.test_datasette_app import datasette_cluster_at
from ..e2e.test_django_app import django_site_cluster
from .test_demo import ARTIFACTS, VIEWPORT, browser

__all__ = ["browser"]  # the fixture, shared with the demo's tests

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

PASSWORD = "browser-pass-1"


async def served_by(page: Page, path: str) -> str:
    """Load `path` in `page` and return the node that served it."""
    response = await page.goto(path)
    assert response is not None and response.ok, f"{path}: {response.status if response else 'no response'}"
    return (await response.all_headers())["forwarder-node"]


@pytest.fixture(scope="module")
async def django_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with django_site_cluster(tmp_path_factory.mktemp("django-browser"), "boss", PASSWORD) as running:
        yield running


@pytest.fixture(scope="module")
async def datasette_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with datasette_cluster_at(tmp_path_factory.mktemp("datasette-browser")) as running:
        yield running


async def test_log_into_the_django_admin_on_a_replica_change_a_book_and_see_it(
    django_cluster: Cluster, browser: Browser
) -> None:
    replica = django_cluster.replicas[0]
    context = await browser.new_context(base_url=replica.url, viewport=VIEWPORT)
    page = await context.new_page()
    try:
        with anyio.fail_after(90):
            assert await served_by(page, "/admin/login/?next=/admin/") == replica.id
            await page.fill("#id_username", "boss")
            await page.fill("#id_password", PASSWORD)
            await page.click("input[type=submit]")
            await expect(page.locator("#site-name")).to_be_visible()
            assert "/admin/" in page.url and "login" not in page.url  # the session, written on the primary

            await served_by(page, "/admin/shelf/book/add/")
            title = f"Solaris {uuid.uuid4().hex[:6]}"
            await page.fill("#id_title", title)
            await page.fill("#id_author", "Lem")
            await page.fill("#id_year", "1961")
            await page.click("input[name=_save]")
            await expect(page.locator(".messagelist")).to_contain_text("was added successfully")

            await page.locator("#result_list").get_by_role("link", name=title).click()
            changed = f"{title} (revised)"
            await page.fill("#id_title", changed)
            await page.click("input[name=_save]")
            await expect(page.locator(".messagelist")).to_contain_text("was changed successfully")

            # The next page load, served by the replica, shows the change.
            assert await served_by(page, "/admin/shelf/book/") == replica.id
            await expect(page.locator("#result_list").get_by_role("link", name=changed)).to_be_visible()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "django-admin-replica.png"))
    finally:
        await context.close()


async def test_submit_a_datasette_write_query_form_on_a_replica_and_see_the_row(
    datasette_cluster: Cluster, browser: Browser
) -> None:
    replica = datasette_cluster.replicas[1]
    context = await browser.new_context(base_url=replica.url, viewport=VIEWPORT)
    page = await context.new_page()
    body = f"written from a browser {uuid.uuid4().hex[:8]}"
    try:
        with anyio.fail_after(90):
            assert await served_by(page, "/app/add_note") == replica.id
            await page.fill("textarea[name=body], input[name=body]", body)
            await page.locator("form.sql input[type=submit], form input[type=submit]").first.click()
            await expect(page.locator(".message-info, .message")).to_contain_text("Note added")

            assert await served_by(page, "/app/notes") == replica.id
            await expect(page.get_by_text(body)).to_be_visible()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "datasette-replica.png"))
    finally:
        await context.close()
