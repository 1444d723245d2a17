"""Fine codes and the appearance mode over HTTP, in the client, the command line and the page
(issue 20): a real `rsir serve` (uvicorn subprocess on 127.0.0.1), a real Milvus Lite file, a real
ONNX bundle with a fine code (``fine_serve_support``: 64-bit retrieval codes collapsed onto 8
values, as trained codes are, and a 128-bit fine code from the same forward pass), the shipped
sample. Every answer is compared with an in-process `Retriever` on the same collection, computed
before the server opened its copy of the file.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil

import httpx
import numpy as np
import pytest

pytest.register_assert_rewrite("serve_support")
from fine_serve_support import FINE_BITS, build_fine_bundle  # noqa: E402
from serve_support import READ, WRITE, ServerProcess, artifact_dirs, auth, copy_db, hits_json  # noqa: E402

from rsir_sdk import Bundle, Retriever  # noqa: E402
from rsir_sdk.cli import main  # noqa: E402
from rsir_sdk.errors import CodeLengthError, InvalidInputError, StoreError  # noqa: E402
from rsir_sdk.serve.client import RemoteRetriever  # noqa: E402

pytest_plugins = ["serve_support"]

COLLECTION = "fine"
QUERIES = (1, 50, 102, 159)     # sample scenes used as queries (each stored once)
COPIED = 10                     # a sample scene stored a second time, under this id:
COPY_ID = 'copies/Ünïcödé, "kopie" ✓ 10'
CODE_BYTES, FINE_BYTES = 8, FINE_BITS // 8


@pytest.fixture(scope="module")
def world(sample_images, sample_dir, tmp_path_factory):
    """The bundle, a closed Lite file with the sample (+ one exact copy), the in-process answers,
    and a server on its own copy of the file."""
    d = tmp_path_factory.mktemp("fine-service")
    bundle = build_fine_bundle(d / "fine-rp64")
    paths = [p.resolve() for p, _ in sample_images] + [sample_images[COPIED][0].resolve()]
    labels = [label for _, label in sample_images] + [sample_images[COPIED][1]]
    ids = [f"{label}/{p.name}" for p, label in sample_images] + [COPY_ID]
    db = d / "local" / "rsir.db"
    db.parent.mkdir()
    queries = [paths[i] for i in QUERIES]
    exp: dict = {"queries": queries, "query_ids": [ids[i] for i in QUERIES]}
    with Retriever(bundle, uri=str(db), collection=COLLECTION) as r:
        r.add_images(paths, ids=ids, labels=labels, metadata=[{"n": i} for i in range(len(ids))])
        both = r.encoder.encode_both(queries)
        exp["codes"], exp["fine"] = both.codes, both.fine
        exp["default"] = [r.search(q, k=12) for q in queries]
        exp["appearance"] = [r.search(q, k=12, mode="appearance") for q in queries]
        exp["appearance radius"] = [r.range_search(q, radius=40, mode="appearance")
                                    for q in queries]
        exp["codes default"] = r.search_codes(both.codes, k=12, fine=both.fine)
        exp["codes appearance"] = r.search_codes(both.codes, k=12, fine=both.fine,
                                                 mode="appearance")
        exp["codes only"] = r.search_codes(both.codes, k=12)
        exp["tie group"] = [len(r.search_codes(c, k=200, radius=0)[0]) for c in both.codes]
        exp["duplicates"] = r.duplicates()
        exp["duplicates 0"] = r.duplicates(0)
        exp["duplicates label"] = r.duplicates(30, {"label": labels[COPIED]})
        exp["count"] = r.count()
        exp["info"] = r.info()
    server = ServerProcess(
        [bundle, "--uri", copy_db(db, d / "remote"), "--collection", COLLECTION,
         "--archive-root", sample_dir, "--max-k", 200,
         "--allow-private-urls"],   # the tests' image host is on loopback
        d / "serve.log", env={"RSIR_READ_TOKEN": READ, "RSIR_WRITE_TOKEN": WRITE})
    yield {"bundle": bundle, "db": db, "dir": d, "ids": ids, "labels": labels, "paths": paths,
           "expected": exp, "server": server, "url": server.url}
    status = server.stop()
    assert status == 0, server.log[-3000:]


@pytest.fixture(scope="module")
def http(world):
    with httpx.Client(base_url=world["url"], timeout=60) as client:
        yield client


def _one_line_error(resp: httpx.Response, status: int, kind: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == kind, body
    assert "\n" not in body["message"] and "Traceback" not in body["message"]
    return body["message"]


def test_the_world_has_big_tie_groups_and_an_exact_copy(world):
    """What the other tests rely on: collapsed retrieval codes (tie groups larger than k) and
    the copy found as a duplicate locally."""
    exp = world["expected"]
    assert min(exp["tie group"]) > 12
    assert exp["info"]["fine_bits"] == FINE_BITS
    assert sorted([world["ids"][COPIED], COPY_ID]) in exp["duplicates 0"]
    for i, qid in enumerate(exp["query_ids"]):
        assert exp["default"][i][0].id == qid and exp["default"][i][0].fine_distance == 0
        assert exp["appearance"][i][0].id == qid and exp["appearance"][i][0].distance == 0


def test_info_and_search_answers_carry_the_fine_code(world, http):
    exp = world["expected"]
    info = http.get("/v1/info", headers=auth(READ)).json()
    assert info["fine_bits"] == info["collection_fine_bits"] == FINE_BITS and info["bits"] == 64
    assert info["fine_ranking"] is True
    assert info["count"] == exp["count"]
    for i, q in enumerate(exp["queries"]):
        data = q.read_bytes()
        raw = http.post("/v1/search", params={"k": 12}, content=data,
                        headers={**auth(READ), "Content-Type": "image/jpeg"})
        assert raw.status_code == 200, raw.text
        hits = raw.json()["hits"]
        assert hits == hits_json(exp["default"][i])
        assert all(isinstance(h["fine_distance"], int) for h in hits)
        # the whole first page is one tie group of the retrieval code, ordered by fine distance
        assert len({h["distance"] for h in hits}) == 1
        assert [h["fine_distance"] for h in hits] == sorted(h["fine_distance"] for h in hits)
        look = http.post("/v1/search", params={"k": 12, "mode": "appearance"}, content=data,
                         headers={**auth(READ), "Content-Type": "image/jpeg"})
        assert look.json()["hits"] == hits_json(exp["appearance"][i])
        assert all(h["fine_distance"] == h["distance"] for h in look.json()["hits"])
        form = http.post("/v1/search/batch", files=[("image", (q.name, data))],
                         data={"k": "5", "mode": "appearance"}, headers=auth(READ))
        assert form.status_code == 200, form.text
        assert form.json()["results"] == [hits_json(exp["appearance"][i][:5])]
        b64 = http.post("/v1/search", headers=auth(READ), json={
            "image_base64": base64.b64encode(data).decode(), "k": 12, "mode": "appearance",
            "radius": 40})
        assert b64.json()["hits"] == hits_json(exp["appearance radius"][i][:12])


def test_remote_retriever_appearance_equals_local(world, image_host, sample_dir):
    exp = world["expected"]
    with RemoteRetriever(world["url"], token=READ) as r:
        for i, q in enumerate(exp["queries"]):
            assert r.search(q, k=12, mode="appearance") == exp["appearance"][i]
            url = f"{image_host}/{q.relative_to(sample_dir.resolve()).as_posix()}"
            assert r.search(url, k=12, mode="appearance") == exp["appearance"][i]  # downloaded
            assert r.search(q, k=12) == exp["default"][i]
            assert r.range_search(q, radius=40, mode="appearance") == exp["appearance radius"][i]
        assert r.search_batch(exp["queries"], k=12, batch_size=2,
                              mode="appearance") == exp["appearance"]
        assert r.search_codes(exp["codes"], k=12, fine=exp["fine"]) == exp["codes default"]
        assert r.search_codes(exp["codes"], k=12, fine=exp["fine"],
                              mode="appearance") == exp["codes appearance"]
        assert r.search_codes(exp["codes"], k=12) == exp["codes only"]
        assert r.info()["fine_bits"] == FINE_BITS
    assert exp["codes default"] == exp["default"] and exp["codes appearance"] == exp["appearance"]
    assert all(h.fine_distance is None for hits in exp["codes only"] for h in hits)
    assert exp["codes only"] != exp["codes default"]      # the fine code changed the order


def test_remote_retriever_refuses_what_it_would_silently_misread(world):
    """Without a local bundle the fine codes' width is the service's (a narrower one was read
    as fewer, wrong records: 4 queries, 2 result lists); a range search the service's max k would
    cut is refused, as the store refuses at its own limit."""
    exp = world["expected"]
    with RemoteRetriever(world["url"], token=READ) as r:
        codes = np.repeat(exp["codes"][:1], 4, axis=0)
        narrow = np.repeat(exp["fine"][:1, :4], 4, axis=0)   # 4 x (8 + 4) bytes: 2 records of 24
        with pytest.raises(CodeLengthError, match=f"{FINE_BITS}"):
            r.search_codes(codes, k=3, fine=narrow)
        assert exp["count"] >= 200                          # the service's --max-k
        with pytest.raises(StoreError, match="200 or more items within radius 64.*max-k"):
            r.range_search(exp["queries"][0], radius=64)
        assert len(r.range_search(exp["queries"][0], radius=40, mode="appearance")) < 200
        # what to pass is said as in process (fine=), not in the wire's terms
        with pytest.raises(InvalidInputError, match=r"searches by the fine code: give fine="):
            r.search_codes(codes, k=3, mode="appearance")
    with RemoteRetriever(world["url"], token=WRITE) as w:
        with pytest.raises(InvalidInputError, match=rf"keeps {FINE_BITS}-bit fine codes: pass "
                                                    r"fine= with one per item"):
            w.add_codes(codes[:1], ["never-written"])
        assert w.get(["never-written"]) == []


def test_edge_client_sends_both_codes_24_bytes_an_image(world):
    exp = world["expected"]
    with RemoteRetriever(world["url"], token=READ, bundle=world["bundle"]) as edge:
        assert edge.search(exp["queries"][0], k=12) == exp["default"][0]
        assert edge.last_request_bytes == CODE_BYTES + FINE_BYTES == 24
        got = edge.search_batch(exp["queries"], k=12, mode="appearance")
        assert got == exp["appearance"]
        assert edge.last_request_bytes == 24 * len(exp["queries"])


def test_codes_route_takes_both_parts_raw_and_json(world, http):
    exp = world["expected"]
    codes, fine = exp["codes"], exp["fine"]
    octet = {**auth(READ), "Content-Type": "application/octet-stream"}
    records = np.hstack([codes, fine]).tobytes()
    raw = http.post("/v1/search/codes", params={"k": 12, "fine": 1}, content=records,
                    headers=octet)
    assert raw.status_code == 200, raw.text
    assert raw.json()["results"] == [hits_json(h) for h in exp["codes default"]]
    raw = http.post("/v1/search/codes", params={"k": 12, "fine": "true", "mode": "appearance"},
                    content=records, headers=octet)
    assert raw.json()["results"] == [hits_json(h) for h in exp["codes appearance"]]
    b64 = [base64.b64encode(c.tobytes()).decode() for c in codes]
    fb64 = [base64.b64encode(f.tobytes()).decode() for f in fine]
    one = http.post("/v1/search/codes", headers=auth(READ), json={
        "code": b64[0], "fine_code": fb64[0], "k": 12, "mode": "appearance"})
    assert one.json()["results"] == [hits_json(exp["codes appearance"][0])]
    many = http.post("/v1/search/codes", headers=auth(READ),
                     json={"codes": b64, "fine_codes": fb64, "k": 12})
    assert many.json()["results"] == [hits_json(h) for h in exp["codes default"]]
    # refused, one line each: a ragged record, a fine code of the wrong width, counts that differ
    msg = _one_line_error(http.post("/v1/search/codes", params={"fine": 1},
                                    content=records[:-1], headers=octet), 422, "CodeLengthError")
    assert "24 bytes" in msg
    msg = _one_line_error(http.post("/v1/search/codes", headers=auth(READ), json={
        "code": b64[0], "fine_code": b64[1]}), 422, "CodeLengthError")
    assert "16 bytes" in msg
    _one_line_error(http.post("/v1/search/codes", headers=auth(READ), json={
        "codes": b64, "fine_codes": fb64[:2]}), 422, "InvalidRequestError")
    _one_line_error(http.post("/v1/search/codes", params={"fine": "maybe"}, content=records,
                              headers=octet), 422, "InvalidRequestError")
    # the appearance mode without fine codes cannot rank: refused, not answered by something else
    bad = http.post("/v1/search/codes", params={"mode": "appearance"}, content=codes.tobytes(),
                    headers=octet)
    msg = _one_line_error(bad, 422, "InvalidInputError")      # the class Retriever raises
    assert "`fine_code` / `fine_codes` in JSON, or `?fine=1`" in msg and "fine=" not in \
        msg.replace("?fine=1", "")   # HTTP words, not the Python keyword
    # a collection that keeps fine codes: codes added without theirs are refused in HTTP words
    write = {**auth(WRITE), "Content-Type": "application/json"}
    msg = _one_line_error(http.post("/v1/codes", headers=write, json={
        "ids": ["edge/nofine"], "codes": b64[:1]}), 422, "InvalidInputError")
    assert "send `fine_codes` (base64, one per id) beside `codes`" in msg


def test_a_bad_mode_is_refused_in_one_line_before_any_work(world, http):
    exp = world["expected"]
    q = exp["queries"][0].read_bytes()
    hdr = {**auth(READ), "Content-Type": "image/jpeg"}
    for resp in (
        http.post("/v1/search", params={"mode": "similar"}, content=q, headers=hdr),
        http.post("/v1/search/batch", files=[("image", ("q.jpg", q))], data={"mode": "fuzzy"},
                  headers=auth(READ)),
        http.post("/v1/search/codes", headers=auth(READ), json={
            "code": base64.b64encode(exp["codes"][0].tobytes()).decode(), "mode": "APPEARANCE"}),
    ):
        assert "mode must be one of default, appearance" in _one_line_error(
            resp, 422, "InvalidInputError")
    _one_line_error(http.post("/v1/search", headers=auth(READ), json={
        "image_base64": base64.b64encode(q).decode(), "mode": 5}), 422, "InvalidRequestError")
    with RemoteRetriever(world["url"], token=READ) as r:
        r.info()
        sent = r.bytes_sent
        with pytest.raises(InvalidInputError, match="mode must be one of"):
            r.search(exp["queries"][0], mode="similar")
        with pytest.raises(InvalidInputError, match="mode must be one of"):
            r.search_codes(exp["codes"], mode=None)  # type: ignore[arg-type]
        assert r.bytes_sent == sent                   # nothing was sent


def test_duplicates_endpoint_and_client_equal_local(world, http):
    from rsir_sdk.store import DEFAULT_DUPLICATE_RADIUS

    exp = world["expected"]
    pair = sorted([world["ids"][COPIED], COPY_ID])
    resp = http.post("/v1/duplicates", json={}, headers=auth(WRITE))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"groups": exp["duplicates"], "radius": DEFAULT_DUPLICATE_RADIUS}
    assert any(set(pair) <= set(g) for g in exp["duplicates"])
    zero = http.post("/v1/duplicates", json={"radius": 0}, headers=auth(WRITE)).json()
    assert zero == {"groups": exp["duplicates 0"], "radius": 0} and pair in zero["groups"]
    label = world["labels"][COPIED]
    by_label = http.post("/v1/duplicates", headers=auth(WRITE),
                         json={"radius": 30, "filter": {"label": label}}).json()
    assert by_label["groups"] == exp["duplicates label"]
    assert all(i.startswith(label + "/") or i == COPY_ID for g in by_label["groups"] for i in g)
    for body in ({"radius": -1}, {"radius": FINE_BITS + 1}, {"radius": "3"}, {"radious": 3},
                 {"filter": [1]}):
        assert http.post("/v1/duplicates", json=body, headers=auth(WRITE)).status_code == 422
    assert http.post("/v1/duplicates", json={}).status_code == 401
    # a whole-collection scan takes the write token, as indexing does
    assert http.post("/v1/duplicates", json={}, headers=auth(READ)).status_code == 403
    with RemoteRetriever(world["url"], token=WRITE) as r:
        assert r.duplicates() == exp["duplicates"]
        assert r.duplicates(0) == exp["duplicates 0"]
        assert r.duplicates(30, {"label": label}) == exp["duplicates label"]
        with pytest.raises(InvalidInputError):
            r.duplicates(-1)


def test_writes_carry_fine_codes_and_a_fine_collection_refuses_codes_without(world):
    exp = world["expected"]
    q = exp["queries"][0]
    with RemoteRetriever(world["url"], token=WRITE, bundle=world["bundle"]) as edge, \
            RemoteRetriever(world["url"], token=WRITE) as plain:
        n = plain.count()
        assert edge.add_images([q], ids=["edge/added"], labels=["Edge"]) == 1
        top = plain.search(q, k=2, mode="appearance")
        assert {h.id for h in top} == {"edge/added", exp["query_ids"][0]}
        assert [h.fine_distance for h in top] == [0, 0]
        with pytest.raises(InvalidInputError):
            plain.add_codes(exp["codes"][:1], ["edge/nofine"])
        with pytest.raises(CodeLengthError):
            plain.add_codes(exp["codes"][:1], ["edge/short"], fine=exp["codes"][:1])
        with pytest.raises(InvalidInputError, match="1 fine codes for 2 codes"):
            plain.add_codes(exp["codes"][:2], ["edge/a", "edge/b"], fine=exp["fine"][:1])
        assert plain.add_codes(exp["codes"][1:2], ["edge/both"], fine=exp["fine"][1:2]) == 1
        assert plain.count() == n + 2
        hit = plain.search_codes(exp["codes"][1], k=2, fine=exp["fine"][1], mode="appearance")[0]
        assert {h.id for h in hit} == {"edge/both", exp["query_ids"][1]}
        assert plain.delete(["edge/added", "edge/both"]) == 2 and plain.count() == n


# ------------------------------------------------------------------ the command line


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def cli_db(world, tmp_path_factory):
    """A private copy of the local file for the command line (the server holds its own)."""
    return copy_db(world["db"], tmp_path_factory.mktemp("fine-cli"))


def test_rsir_duplicates_writes_csv_and_json_reports(world, cli_db, tmp_path, capsys, rp_bundle):
    exp = world["expected"]
    out_csv = tmp_path / "dups.csv"
    code, out, err = _cli(capsys, "duplicates", world["bundle"], "--uri", cli_db,
                          "--collection", COLLECTION, "--radius", 0, "--out", out_csv)
    assert code == 0, err
    assert out == "" and f"{len(exp['duplicates 0'])} group(s)" in err and str(out_csv) in err
    with open(out_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["group", "id", "path", "label"]
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row["id"])
    assert list(groups.values()) == exp["duplicates 0"]             # the Unicode id round-trips
    copy_row = next(row for row in rows if row["id"] == COPY_ID)
    assert copy_row["label"] == world["labels"][COPIED]
    assert copy_row["path"] == str(world["paths"][COPIED])
    code, out, err = _cli(capsys, "duplicates", world["bundle"], "--uri", cli_db,
                          "--collection", COLLECTION, "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    from rsir_sdk.store import DEFAULT_DUPLICATE_RADIUS

    assert report["radius"] == DEFAULT_DUPLICATE_RADIUS and report["collection"] == COLLECTION
    assert [[it["id"] for it in g["items"]] for g in report["groups"]] == exp["duplicates"]
    assert [g["group"] for g in report["groups"]] == list(range(1, len(exp["duplicates"]) + 1))
    assert all(g["size"] == len(g["items"]) >= 2 for g in report["groups"])
    code, _, err = _cli(capsys, "duplicates", world["bundle"], "--uri", cli_db,
                        "--collection", COLLECTION, "--radius", -2)
    assert code == 2 and "radius" in err and len(err.strip().splitlines()) == 1
    longest = Bundle.load(world["bundle"]).fine_bits  # beyond it every item is one group
    code, _, err = _cli(capsys, "duplicates", world["bundle"], "--uri", cli_db,
                        "--collection", COLLECTION, "--radius", longest + 1)
    assert code == 2 and err.strip() == (f"rsir duplicates: radius must be between 0 and "
                                          f"{longest} (the fine-code length), got {longest + 1}")
    assert "look at them before deleting" not in err                 # small groups: no word
    code, out, err = _cli(capsys, "duplicates", world["bundle"], "--uri", cli_db,
                          "--collection", COLLECTION, "--radius", longest // 2, "--format", "json")
    largest = max(g["size"] for g in json.loads(out)["groups"])
    assert code == 0 and largest > 5 and (f"hold more than 5 items (the largest {largest}): "
                                          f"look-alike scenes") in err, err
    code, _, err = _cli(capsys, "duplicates", rp_bundle[0], "--uri", cli_db,
                        "--collection", "never_written")        # a bundle without a fine code
    assert code == 2 and "has none" in err and len(err.strip().splitlines()) == 1
    # a collection that does not exist: its one line, no empty progress bar before it
    code, _, err = _cli(capsys, "duplicates", world["bundle"], "--uri", cli_db,
                        "--collection", "never_written")
    assert code == 1 and err.strip().splitlines() == [err.strip()], err
    assert "collection 'never_written' does not exist" in err and "item" not in err


def test_rsir_search_appearance_and_the_fine_column(world, cli_db, capsys):
    exp = world["expected"]
    q = exp["queries"][1]
    code, out, err = _cli(capsys, "search", world["bundle"], q, "--uri", cli_db, "--collection",
                          COLLECTION, "-k", 12, "--appearance", "--json")
    assert code == 0, err
    assert json.loads(out) == [{"rank": i, **h} for i, h in
                               enumerate(hits_json(exp["appearance"][1]), 1)]
    code, out, err = _cli(capsys, "search", world["bundle"], q, "--uri", cli_db, "--collection",
                          COLLECTION, "-k", 12, "--mode", "default")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["rank", "id", "distance", "fine"]
    assert lines[1].split()[1] == exp["query_ids"][1] and lines[1].split()[3] == "0"
    code, _, err = _cli(capsys, "search", world["bundle"], q, "--uri", cli_db, "--appearance",
                        "--mode", "appearance")
    assert code == 2 and "not allowed with" in err


def test_rsir_info_says_fine_bits_and_how_to_rebuild_an_old_collection(world, cli_db, capsys):
    from rsir_sdk import Bundle
    from rsir_sdk.store import MilvusCodeStore

    bundle = Bundle.load(world["bundle"])
    # a collection of this encoder written before fine codes: the store keeps none
    with MilvusCodeStore(str(cli_db), "old", bits=64,
                         encoder={**bundle.identity(), "raster_rule": None}) as old:
        old.upsert(["a", "b"], world["expected"]["codes"][:2], ["x", "y"])
        assert old.fine_bits is None
    code, out, err = _cli(capsys, "info", world["bundle"])
    assert code == 0, err
    assert f"fine_bits    {FINE_BITS} (random_projection)" in out
    code, out, err = _cli(capsys, "info", world["bundle"], "--uri", cli_db, "--collection",
                          COLLECTION)
    assert code == 0, err
    assert f"{world['expected']['count']} items, fine codes {FINE_BITS} bits" in out
    assert "rebuild" not in out
    code, out, err = _cli(capsys, "info", world["bundle"], "--uri", cli_db, "--collection", "old")
    assert code == 0, err
    assert "2 items, no fine codes" in out
    # what rsir collections and --json say about places and times, in words too
    assert "place, time  2 items without a place, 2 without a time" in out
    rebuild = [line for line in out.splitlines() if line.startswith("rebuild")]
    assert len(rebuild) == 1 and f"rsir drop old --uri {cli_db} --yes" in rebuild[0]
    assert "rsir index BUNDLE ARCHIVE" in rebuild[0]
    code, out, _ = _cli(capsys, "info", world["bundle"], "--json", "--uri", cli_db,
                        "--collection", "old")
    info = json.loads(out)
    assert info["fine_bits"] == FINE_BITS and info["store"]["fine_bits"] is None
    code, out, _ = _cli(capsys, "collections", "--uri", cli_db)
    assert code == 0 and "1 collection(s) without fine codes (old)" in out
    table = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert table[COLLECTION][-2] == str(FINE_BITS) and table["old"][-2] == "-"


# ------------------------------------------------------------------ the page

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium")
def test_page_appearance_toggle_sends_the_mode_and_shows_fine_distances(world, tmp_path):
    from playwright import sync_api

    exp = world["expected"]
    differ = [i for i in range(len(QUERIES))
              if [h.id for h in exp["appearance"][i]] != [h.id for h in exp["default"][i]]]
    assert differ, "no query whose appearance hits differ from its default hits"
    n = differ[0]
    q = exp["queries"][n]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            sent: list[str] = []
            page.on("request", lambda req: sent.append(req.url) if "/v1/search" in req.url
                    else None)
            page.goto(world["url"] + "/")
            expect = sync_api.expect
            page.fill("#token", READ)
            page.click("#token-form button")
            expect(page.locator("#about")).to_contain_text(f"{exp['count']} items")
            expect(page.locator("#about")).to_contain_text(f"64-bit codes + {FINE_BITS}-bit fine")
            toggle = page.locator("#appearance")
            expect(toggle).to_be_enabled()
            page.set_input_files("#file", str(q))
            cards = page.locator(".hit-card")
            expect(cards).to_have_count(12)
            assert [c.get_attribute("data-id") for c in cards.all()] == \
                [h.id for h in exp["default"][n]]
            assert cards.first.locator(".fine-distance").inner_text() == "fine distance 0"
            assert "mode=" not in sent[-1]
            toggle.check()
            expect(page.locator("#status")).to_contain_text("by appearance")
            assert "mode=appearance" in sent[-1]
            want = [h.id for h in exp["appearance"][n]]
            expect(cards.first).to_have_attribute("data-id", want[0])
            assert [c.get_attribute("data-id") for c in cards.all()] == want
            shown = [c.locator(".fine-distance").inner_text() for c in cards.all()]
            assert shown == [f"fine distance {h.fine_distance}" for h in exp["appearance"][n]]
            assert want != [h.id for h in exp["default"][n]]    # the mode changed the hits
            shot = tmp_path / "serve-page-appearance.png"
            page.screenshot(path=str(shot), full_page=True)
            toggle.uncheck()
            expect(page.locator("#status")).to_have_text(re.compile(r"^12 hits in \d+ ms$"))
            assert [c.get_attribute("data-id") for c in cards.all()] == \
                [h.id for h in exp["default"][n]]
            assert not errors, errors
        finally:
            browser.close()
    for d in artifact_dirs(tmp_path)[1:]:
        shutil.copy2(shot, d / shot.name)



# ------------------------------------------------------------------ an old collection


def test_an_old_collection_without_fine_codes_is_served_as_before(world, tmp_path):
    """A collection this encoder filled before fine codes existed, served with the new bundle:
    searches rank as before (no `fine_distance`), edge fine codes are dropped, the appearance
    mode and duplicates say to rebuild it (409, one line), /v1/info and the page say so."""
    from rsir_sdk import Bundle, Encoder
    from rsir_sdk.rasters import RasterRule
    from rsir_sdk.store import MilvusCodeStore

    bundle = Bundle.load(world["bundle"])
    paths, ids = world["paths"][:40], world["ids"][:40]
    db = tmp_path / "old.db"
    identity = {**bundle.identity(), "raster_rule": RasterRule().to_dict()}
    with MilvusCodeStore(str(db), "old", bits=64, encoder=identity) as store:
        store.upsert(ids, Encoder(bundle).encode(paths), world["labels"][:40])
        assert store.fine_bits is None
    q = paths[7]
    with Retriever(world["bundle"], uri=str(db), collection="old") as r:
        want = r.search(q, k=10)
    assert want[0].distance == 0 and all(h.fine_distance is None for h in want)
    server = ServerProcess([world["bundle"], "--uri", db, "--collection", "old"],
                           tmp_path / "serve.log", env={"RSIR_READ_TOKEN": READ})
    try:
        with httpx.Client(base_url=server.url, timeout=60, headers=auth(READ)) as http:
            info = http.get("/v1/info").json()
            assert info["fine_bits"] == FINE_BITS and info["collection_fine_bits"] is None
            assert info["fine_ranking"] is False
            hits = http.post("/v1/search", params={"k": 10}, content=q.read_bytes(),
                             headers={"Content-Type": "image/jpeg"}).json()["hits"]
            assert hits == hits_json(want) and all("fine_distance" not in h for h in hits)
            msg = _one_line_error(http.post("/v1/search", params={"mode": "appearance"},
                                            content=q.read_bytes(),
                                            headers={"Content-Type": "image/jpeg"}),
                                  409, "CollectionMismatchError")
            assert "rsir drop" in msg or "rebuild" in msg
            _one_line_error(http.post("/v1/duplicates", json={}), 409, "CollectionMismatchError")
        with RemoteRetriever(server.url, token=READ, bundle=world["bundle"]) as edge:
            assert edge.search(q, k=10) == want               # its fine code was dropped
            assert edge.last_request_bytes == 24
        _page_says_no_fine_codes(server.url)
    finally:
        assert server.stop() == 0, server.log[-3000:]


def test_a_bundle_without_a_fine_code_refuses_fine_codes_in_one_line(world, rp_bundle, tmp_path):
    """A service running a bundle written before fine codes: /v1/info says none, hits have no
    `fine_distance`, fine codes sent to it and the appearance mode are refused (422, one line)."""
    paths, ids = world["paths"][:20], world["ids"][:20]
    db = tmp_path / "rp.db"
    with Retriever(rp_bundle[0], uri=str(db), collection="rp") as r:
        r.add_images(paths, ids=ids)
        codes = r.encoder.encode(paths[:2])
        want = r.search_codes(codes, k=5)
    server = ServerProcess([rp_bundle[0], "--uri", db, "--collection", "rp"],
                           tmp_path / "serve.log", env={"RSIR_READ_TOKEN": READ})
    try:
        with httpx.Client(base_url=server.url, timeout=60, headers=auth(READ)) as http:
            info = http.get("/v1/info").json()
            assert info["fine_bits"] is None and info["collection_fine_bits"] is None
            octet = {"Content-Type": "application/octet-stream"}
            plain = http.post("/v1/search/codes", params={"k": 5}, content=codes.tobytes(),
                              headers=octet).json()["results"]
            assert plain == [hits_json(h) for h in want]
            assert all("fine_distance" not in h for hits in plain for h in hits)
            records = np.hstack([codes, world["expected"]["fine"][:2]]).tobytes()
            msg = _one_line_error(http.post("/v1/search/codes", params={"fine": 1},
                                            content=records, headers=octet),
                                  422, "InvalidInputError")
            assert "has no fine code" in msg
            _one_line_error(http.post("/v1/search", params={"mode": "appearance"},
                                      content=paths[0].read_bytes(),
                                      headers={"Content-Type": "image/jpeg"}),
                            422, "InvalidInputError")
    finally:
        assert server.stop() == 0, server.log[-3000:]

def _page_says_no_fine_codes(url: str) -> None:
    """The page's appearance toggle is off and says why (when Chromium is here)."""
    if not shutil.which(CHROMIUM):
        return
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.fill("#token", READ)
            page.click("#token-form button")
            expect = sync_api.expect
            expect(page.locator("#about")).to_contain_text("40 items")
            expect(page.locator("#appearance")).to_be_disabled()
            assert "keeps no fine codes" in page.locator("#appearance-toggle").get_attribute(
                "title")
            assert "fine codes" not in page.locator("#about").inner_text()
        finally:
            browser.close()

# ------------------------------------------------------------------ a Milvus server


def test_the_service_on_a_milvus_server_ranks_by_the_fine_code_as_in_process(
        world, server_uri, tmp_path):
    """The same service on the Milvus 2.3.5 server (which keeps the fine codes in a companion
    collection: one vector field per collection there): HTTP answers equal the in-process ones,
    both modes, edge codes with both parts, duplicates."""
    paths, ids, labels = world["paths"][:60], world["ids"][:60], world["labels"][:60]
    paths, ids, labels = paths + [paths[5]], ids + ["copy/5"], labels + [labels[5]]
    name = "fine_service_srv"
    queries = [paths[i] for i in (1, 30, 50)]
    with Retriever(world["bundle"], uri=server_uri, collection=name) as r:
        r.add_images(paths, ids=ids, labels=labels)
        r.prepare_for_search()
        both = r.encoder.encode_both(queries)
        want = {"default": r.search_batch(queries, k=8),
                "appearance": r.search_batch(queries, k=8, mode="appearance"),
                "codes": r.search_codes(both.codes, k=8, fine=both.fine),
                "duplicates": r.duplicates(0)}
    assert ["copy/5", ids[5]] in want["duplicates"] or [ids[5], "copy/5"] in want["duplicates"]
    assert all(h.fine_distance is not None for hits in want["default"] for h in hits)
    server = ServerProcess([world["bundle"], "--uri", server_uri, "--collection", name],
                           tmp_path / "serve.log", env={"RSIR_READ_TOKEN": READ})
    try:
        with RemoteRetriever(server.url, token=READ) as remote, \
                RemoteRetriever(server.url, token=READ, bundle=world["bundle"]) as edge:
            assert remote.info()["fine_bits"] == FINE_BITS
            assert remote.search_batch(queries, k=8) == want["default"]
            assert remote.search_batch(queries, k=8, mode="appearance") == want["appearance"]
            assert edge.search_batch(queries, k=8) == want["codes"] == want["default"]
            assert edge.last_request_bytes == 24 * len(queries)
            assert remote.duplicates(0) == want["duplicates"]
    finally:
        assert server.stop() == 0, server.log[-3000:]
