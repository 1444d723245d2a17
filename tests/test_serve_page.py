"""The search page in a real headless Chromium (Debian's, driven by playwright; no download):
token prompt, upload a sample scene, k hit cards with the right first label, footprints on the
SVG map, "more" paging, a box dragged on the map filtering the search (checked against the API
and a brute force over the known footprints), a period; screenshots are saved as artifacts."""

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


def _meets(box: tuple[float, ...], fp: list[float]) -> bool:
    """Brute force: a footprint (no antimeridian here) meets the box, bounds inclusive."""
    w, s, e, n = box
    return fp[0] <= e and fp[2] >= w and fp[1] <= n and fp[3] >= s


def test_page_draws_footprints_and_filters_by_a_drawn_box_and_a_period(main_server, served,
                                                                         tmp_path):
    """Footprints drawn on the plot (one shape per hit); a box dragged on it filters the search
    to the items meeting the box (the same hits as the API, checked by brute force); clearing
    it restores the hits; a period is sent as `time`; a click on a footprint picks its card."""
    from playwright import sync_api
    from serve_support import footprint

    from rsir_sdk.serve.client import RemoteRetriever

    query = served.expected["queries"][2]
    index = {item: i for i, item in enumerate(served.ids)}
    with sync_api.sync_playwright() as p, RemoteRetriever(main_server.url, token=READ) as api:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(main_server.url + "/")
            expect = sync_api.expect
            page.fill("#token", READ)
            page.click("#token-form button")
            expect(page.locator("#about")).to_contain_text("200 items")
            page.set_input_files("#file", str(query))
            cards = page.locator(".hit-card")
            expect(cards).to_have_count(12)
            shapes = page.locator("#map .footprint")
            expect(shapes).to_have_count(12)                         # one drawn shape per hit
            before = [c.get_attribute("data-id") for c in cards.all()]
            assert before == [h.id for h in api.search(query, k=12)]
            # drag a box round hit #1's footprint (12 px beyond it on every side)
            first = page.locator(f'#map .footprint[data-id="{before[0]}"]').bounding_box()
            x0, y0 = first["x"] - 12, first["y"] - 12
            x1, y1 = first["x"] + first["width"] + 12, first["y"] + first["height"] + 12
            page.mouse.move(x0, y0)
            page.mouse.down()
            page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
            expect(page.locator("#map .drawing")).to_have_count(1)   # the box follows the mouse
            page.mouse.move(x1, y1, steps=4)
            page.mouse.up()
            expect(page.locator("#status")).to_contain_text("in the drawn box")
            value = page.locator("#bbox-value")
            box = tuple(float(v) for v in value.get_attribute("data-bbox").split(","))
            assert box[0] < box[2] and box[1] < box[3]
            want = api.search(query, k=12, bbox=box)
            inside = [item for item in served.ids if _meets(box, footprint(index[item]))]
            assert api.count(bbox=box) == len(inside)
            assert [h.id for h in want] == [c.get_attribute("data-id") for c in cards.all()]
            assert {h.id for h in want} <= set(inside) and len(want) == min(12, len(inside))
            assert want[0].id == before[0]                           # the best hit is inside
            assert [h.id for h in want] != before                    # the box changed the hits
            assert all(_meets(box, list(h.footprint)) for h in want)
            expect(page.locator("#map .bbox-filter")).to_have_count(1)
            expect(shapes).to_have_count(len(want))
            page.screenshot(path=str(tmp_path / "serve-page-box.png"), full_page=True)
            # a click on a footprint (no drag) picks its card
            target = shapes.last                                     # drawn last: the best hit
            target.click()
            expect(page.locator(f'.hit-card.picked[data-id="{want[0].id}"]')).to_have_count(1)
            page.click("#bbox-clear")
            expect(value).to_have_attribute("data-bbox", "")
            expect(page.locator("#status")).not_to_contain_text("drawn box")
            expect(cards).to_have_count(12)
            assert [c.get_attribute("data-id") for c in cards.all()] == before
            # a period: the sample's items carry no time, so none is in any period
            page.fill("#time-start", "2020-01-01")
            page.dispatch_event("#time-start", "change")
            expect(page.locator("#status")).to_contain_text("time 2020-01-01 to any")
            expect(cards).to_have_count(0)
            assert api.count(time="2020-01-01/..") == 0
            page.fill("#time-start", "")
            page.dispatch_event("#time-start", "change")
            expect(cards).to_have_count(12)
            assert not errors, errors
        finally:
            browser.close()
    for d in artifact_dirs(tmp_path)[1:]:
        shutil.copy2(tmp_path / "serve-page-box.png", d / "serve-page-box.png")
