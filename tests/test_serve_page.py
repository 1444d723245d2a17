"""The search page in a real headless Chromium (Debian's, driven by playwright; no download):
token prompt, upload a sample scene, k hit cards with the right first label, footprints on the
SVG map, "more" paging, a box dragged on the map filtering the search (checked against the API
and a brute force over the known footprints), a period; a failed search (not an image, a URL
that is not found, the service stopped) clearing the hits of the query before it; each field
of a card shown once; screenshots are saved as artifacts."""

from __future__ import annotations

import base64
import contextlib
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image

pytest.register_assert_rewrite("serve_support")
from serve_support import (  # noqa: E402
    COLLECTION,
    READ,
    ServerProcess,
    artifact_dirs,
    copy_db,
    footprint,
)

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
            _near_and_largest_distance(page, expect, api, query, before, index)
            assert not errors, errors
        finally:
            browser.close()
    for d in artifact_dirs(tmp_path)[1:]:
        shutil.copy2(tmp_path / "serve-page-box.png", d / "serve-page-box.png")


def _near_and_largest_distance(page, expect, api, query, before: list[str],
                               index: dict[str, int]) -> None:
    """Near a point (lon, lat, km: the API's metres) and a largest distance on the page, as
    the API answers them (the page had neither: the one API lacked them there)."""
    cards = page.locator(".hit-card")
    w, s, e, n = footprint(index[before[3]])
    lon, lat = round((w + e) / 2, 4), round((s + n) / 2, 4)
    page.fill("#near", f"{lon}, {lat}, 1")
    page.dispatch_event("#near", "change")
    expect(page.locator("#status")).to_contain_text(f"within 1 km of {lon}, {lat}")
    want = api.search(query, k=12, near=(lon, lat, 1000))
    assert 0 < len(want) < 12 and before[3] in [h.id for h in want]
    expect(cards).to_have_count(len(want))
    assert [c.get_attribute("data-id") for c in cards.all()] == [h.id for h in want]
    page.fill("#near", "somewhere")
    page.dispatch_event("#near", "change")
    expect(page.locator("#status")).to_contain_text("near: give longitude, latitude")
    expect(cards).to_have_count(0)                           # nothing of the last query
    page.fill("#near", "")
    radius = api.search(query, k=12)[5].distance
    page.fill("#radius", str(radius))
    page.dispatch_event("#radius", "change")
    expect(page.locator("#status")).to_contain_text(f"distance at most {radius}")
    want = api.search(query, k=12, radius=radius)
    assert 5 < len(want) and all(h.distance <= radius for h in want)
    expect(cards).to_have_count(len(want))
    assert [c.get_attribute("data-id") for c in cards.all()] == [h.id for h in want]
    page.fill("#radius", "")
    page.dispatch_event("#radius", "change")
    expect(cards).to_have_count(12)


def _sign_in(page, url: str, expect) -> None:
    page.goto(url + "/")
    page.fill("#token", READ)
    page.click("#token-form button")
    expect(page.locator("#about")).to_contain_text("200 items")


@contextlib.contextmanager
def _browser_page() -> Iterator[tuple[Any, list[str], Any]]:
    """``(page, errors, expect)``: a page in a fresh headless Chromium, the page's script
    errors collected; the browser is closed after."""
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors, sync_api.expect
        finally:
            browser.close()


def _private_server(served, sample_dir, d: Path, extra: dict | None = None,
                    options: tuple[str, ...] = ()) -> ServerProcess:
    """A service of its own (no tokens) on a copy of the sample's collection, for a test that
    stops it or adds to it; ``extra``: ``{id: (image, label, metadata)}`` added first;
    ``options``: more ``rsir serve`` arguments."""
    from rsir_sdk import Retriever

    db = copy_db(served.db, d)
    if extra:
        with Retriever(served.bundle, uri=str(db), collection=COLLECTION) as r:
            ids = list(extra)
            r.add_images([extra[i][0] for i in ids], ids=ids, labels=[extra[i][1] for i in ids],
                         metadata=[extra[i][2] for i in ids])
    return ServerProcess([served.bundle, "--uri", db, "--collection", COLLECTION,
                          "--archive-root", sample_dir, *options], d / "serve.log")


def test_page_clears_the_hits_when_a_new_search_fails(main_server, served, sample_dir,
                                                      image_host, tmp_path):
    """A search that fails (a file that is not an image, a URL the image host does not have)
    shows its error and no hits: never the previous query's hits under the new query. An
    answer to an older search that arrives after a newer one started is dropped."""
    queries = served.expected["queries"]
    notes = tmp_path / "notes.txt"
    notes.write_text("these are notes, not an image\n")
    with _browser_page() as (page, errors, expect):
        _sign_in(page, main_server.url, expect)
        status, cards = page.locator("#status"), page.locator(".hit-card")
        shapes = page.locator("#map .footprint")

        def search_ok(query: Path) -> None:
            page.set_input_files("#file", str(query))
            expect(status).to_contain_text("12 hits")
            expect(cards).to_have_count(12)
            expect(shapes).to_have_count(12)

        def failed() -> None:   # the error, and nothing left of the query before
            expect(status).to_have_class("error")
            expect(cards).to_have_count(0)
            expect(shapes).to_have_count(0)
            expect(page.locator("#more")).to_be_hidden()

        search_ok(queries[0])
        page.set_input_files("#file", str(notes))
        expect(page.locator("#query-name")).to_contain_text("notes.txt")
        failed()
        # a TIFF: searched, and "no preview" rather than a broken image
        tif = tmp_path / "scene.tif"
        Image.open(queries[4]).save(tif)
        search_ok(tif)
        expect(page.locator("#query-name")).to_have_text("scene.tif (no preview)")
        expect(page.locator("#query-img")).to_be_hidden()
        page.screenshot(path=str(tmp_path / "serve-page-failed.png"), full_page=True)
        search_ok(queries[1])
        page.fill("#url", image_host + "/no-such-scene.jpg")
        page.click("#url-form button")
        failed()
        # an older search answered after a newer one failed: its hits are not shown
        search_ok(queries[2])
        slow = image_host + "/slow/1.5/" + queries[3].relative_to(sample_dir.resolve()).as_posix()
        with page.expect_response(lambda r: r.url.endswith("/v1/search")) as answer:
            page.fill("#url", slow)
            page.click("#url-form button")
            page.set_input_files("#file", str(notes))    # meanwhile: a newer query, refused
            failed()
        assert answer.value.ok                           # the older search did find hits
        answer.value.finished()
        page.wait_for_timeout(300)                       # time enough to have drawn them
        expect(cards).to_have_count(0)
        expect(status).to_have_class("error")
        assert not errors, errors


def test_page_says_when_the_service_cannot_be_reached(served, sample_dir, tmp_path):
    """With the service stopped the page says so in words, not the browser's "Failed to
    fetch"; a failed "More results" keeps the hits shown (still the query's), a failed new
    query clears them."""
    queries = served.expected["queries"]
    server = _private_server(served, sample_dir, tmp_path / "own")
    try:
        with _browser_page() as (page, errors, expect):
            page.goto(server.url + "/")
            expect(page.locator("#about")).to_contain_text("200 items")
            status, cards = page.locator("#status"), page.locator(".hit-card")
            page.set_input_files("#file", str(queries[0]))
            expect(cards).to_have_count(12)
            shown = [c.get_attribute("data-id") for c in cards.all()]
            assert server.stop() == 0
            page.click("#more")                         # the same query, one page more
            expect(status).to_have_class("error")
            expect(status).to_have_text("The service cannot be reached (is rsir serve running?)")
            assert [c.get_attribute("data-id") for c in cards.all()] == shown
            page.set_input_files("#file", str(queries[1]))   # a new query
            expect(page.locator("#query-name")).to_have_text(queries[1].name)
            expect(cards).to_have_count(0)
            expect(status).to_have_class("error")
            expect(status).to_contain_text("cannot be reached")
            assert "Failed to fetch" not in page.inner_text("body")
            assert not errors, errors
    finally:
        server.stop()


def test_page_shows_each_field_of_a_card_once(served, sample_dir, tmp_path):
    """An item whose metadata holds `time` (as a manifest's time column gives) has one `time`
    row on its card, the hit's, and its other metadata keys after it."""
    query = served.expected["queries"][0]
    when = "2021-06-01T10:30:00Z"
    meta = {"time": when, "lonlat_bounds": footprint(500), "lonlat": footprint(500)[:2]}
    # metadata off the globe (metres tagged as degrees, a latitude of -134): no footprint in
    # the store, and none on the map (the map drew it, zoomed out to 5e6 degrees)
    off = {"lonlat": [151.0, -134.0], "crs": "EPSG:4326", "bounds": [0.0, 5.0e6, 1.0, 5.0e6]}
    server = _private_server(served, sample_dir, tmp_path / "own",
                             extra={"timed/scene": (query, "Timed", meta),
                                    "off/globe": (query, "Off", off)})
    try:
        with _browser_page() as (page, errors, expect):
            page.goto(server.url + "/")
            expect(page.locator("#about")).to_contain_text("202 items")
            page.set_input_files("#file", str(query))
            card = page.locator('.hit-card[data-id="timed/scene"]')
            expect(card).to_have_count(1)
            expect(page.locator('.hit-card[data-id="off/globe"]')).to_have_count(1)
            expect(page.locator('#map .footprint[data-id="timed/scene"]')).to_have_count(1)
            assert page.locator('#map .footprint[data-id="off/globe"]').count() == 0
            keys = card.locator("dt").all_inner_texts()
            assert keys[:2] == ["id", "time"] and sorted(keys[2:]) == ["lonlat", "lonlat_bounds"]
            assert card.locator("dd").nth(1).inner_text() == when
            twin = served.expected["search"][0][0].id                # the same scene, no time
            untimed = page.locator(f'.hit-card[data-id="{twin}"] dt').all_inner_texts()
            assert "time" not in untimed and "n" in untimed, untimed
            assert not errors, errors
    finally:
        server.stop()


def test_page_follows_the_service_limits_and_refuses_what_it_cannot_read(served, sample_dir,
                                                                         tmp_path):
    """Under --max-k 10 the page offers no k above 10 (its default 12 failed every first
    search) and under --no-urls no URL box; a half-typed date, a negative or hexadecimal
    `near` distance are errors, not searches without them; a .json file goes as an image (it
    was read as a JSON request); a file dropped beside the drop zone is the query (the
    browser opened it and left the page)."""
    queries = served.expected["queries"]
    server = _private_server(served, sample_dir, tmp_path / "own",
                             options=("--max-k", "10", "--no-urls"))
    try:
        with _browser_page() as (page, errors, expect):
            page.goto(server.url + "/")
            expect(page.locator("#about")).to_contain_text("200 items")
            sizes = [int(x) for x in page.locator("#k option").all_inner_texts()]
            assert sizes == [8, 10] and page.input_value("#k") == "10", sizes
            assert page.locator("#url").is_hidden()
            status, cards = page.locator("#status"), page.locator(".hit-card")
            page.set_input_files("#file", str(queries[0]))
            expect(status).to_contain_text("10 hits")
            expect(cards).to_have_count(10)
            page.focus("#time-start")
            page.keyboard.type("06")                      # month typed, day and year not
            assert page.evaluate("document.getElementById('time-start').validity.badInput")
            page.dispatch_event("#time-start", "change")
            expect(status).to_have_text("from: the date is incomplete; finish it or clear it")
            expect(cards).to_have_count(0)
            page.evaluate("document.getElementById('time-start').value = ''")
            for typed, said in (("1.5, 43.6, -3", "kilometres, 0 or more"),
                                ("1.5, 43.6, 0x10", "give longitude, latitude and kilometres"),
                                ("1.5,,43.6,,20", "give longitude, latitude and kilometres")):
                page.fill("#near", typed)
                page.dispatch_event("#near", "change")
                expect(status).to_contain_text(said)
            page.fill("#near", "")
            page.dispatch_event("#near", "change")
            expect(status).to_contain_text("10 hits")
            notes = tmp_path / "area.json"
            notes.write_text('{"type": "FeatureCollection", "features": []}')
            page.set_input_files("#file", str(notes))
            # an image that is not one, named by its file (the service says "<request body,
            # N bytes>"), in the service's words without its error class
            expect(status).to_contain_text("cannot load image \u201carea.json\u201d: not an image")
            assert not page.inner_text("#status").startswith("ImageLoadError")
            assert page.get_attribute("#status", "title") == "ImageLoadError"
            data = base64.b64encode(queries[1].read_bytes()).decode()
            page.evaluate("""(b64) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
                document.getElementById("status").dispatchEvent(
                    new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
            }""", data)
            expect(page.locator("#query-name")).to_have_text("dropped.jpg")
            expect(status).to_contain_text("10 hits")
            want = [h.id for h in served.expected["search"][1][:10]]
            assert [c.get_attribute("data-id") for c in cards.all()] == want
            assert not errors, errors
    finally:
        server.stop()
