"""The search page in a real headless Chromium (Debian's, driven by playwright; no download):
token prompt, upload a sample scene, k hit cards with the right first label, footprints on the
SVG map, "more" paging; a screenshot is saved as a test artifact."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.register_assert_rewrite("serve_support")
from serve_support import READ, artifact_dirs  # noqa: E402

pytest_plugins = ["serve_support"]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium "
                                       "(apt-get install chromium)")


def test_page_searches_by_upload(main_server, served, tmp_path):
    from playwright import sync_api  # a dev dependency: missing it is a failure, not a skip

    query = served.expected["queries"][1]
    label = query.parent.name
    foreign: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda req: foreign.append(req.url)
                    if not req.url.startswith((main_server.url, "data:", "blob:")) else None)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(main_server.url + "/")
            expect = sync_api.expect
            expect(page.locator("#auth")).to_be_visible()             # auth is on: it asks
            page.fill("#token", READ)
            page.click("#token-form button")
            expect(page.locator("#about")).to_contain_text("200 items")
            assert page.evaluate("sessionStorage.getItem('rsir-token')") == READ
            page.select_option("#k", "8")
            page.set_input_files("#file", str(query))
            cards = page.locator(".hit-card")
            expect(cards).to_have_count(8)
            assert cards.first.locator(".label").inner_text() == label
            assert cards.first.locator(".distance").inner_text() == "distance 0"
            want = served.expected["search"][1][:8]
            assert [c.get_attribute("data-id") for c in cards.all()] == [h.id for h in want]
            expect(page.locator(".hit-card .thumb img")).to_have_count(8)   # thumbnails loaded
            expect(page.locator("#map .footprint")).to_have_count(8)        # all georeferenced
            page.click("#more")
            expect(cards).to_have_count(16)
            page.fill("#label", "River")
            page.dispatch_event("#label", "change")
            expect(page.locator(".hit-card .label").first).to_have_text("River")
            page.fill("#label", "")
            page.dispatch_event("#label", "change")
            expect(cards).to_have_count(8)
            expect(page.locator(".hit-card .thumb img")).to_have_count(8)
            shot = tmp_path / "serve-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    for d in artifact_dirs(tmp_path)[1:]:
        shutil.copy2(shot, d / shot.name)
    assert shot.stat().st_size > 10_000
    assert not foreign, f"the page reached outside the service: {foreign}"


def test_page_asks_for_the_token_before_showing_any_error(main_server):
    """Opening the page of a service with tokens shows a neutral prompt, not a red
    AuthenticationError; a wrong token is then an error, the right one opens the page."""
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(main_server.url + "/")
            expect = sync_api.expect
            expect(page.locator("#auth")).to_be_visible()
            status = page.locator("#status")
            expect(status).to_contain_text("Enter the access token")
            expect(status).not_to_have_class("error")
            assert "AuthenticationError" not in page.inner_text("body")
            assert page.evaluate("getComputedStyle(document.getElementById('status')).color") \
                != "rgb(163, 32, 32)"                                   # not the error red
            page.fill("#token", "not-the-token")
            page.click("#token-form button")
            expect(status).to_have_class("error")                      # the user asked: an error
            expect(status).to_contain_text("not accepted")
            page.fill("#token", READ)
            page.click("#token-form button")
            expect(page.locator("#about")).to_contain_text("200 items")
            expect(status).not_to_have_class("error")
            assert not errors, errors
        finally:
            browser.close()
