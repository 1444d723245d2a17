"""Every bad input of issue 11: one line, the documented exit status, and nothing written.

The Python API raises :class:`~rsir_sdk.errors.InvalidInputError` (or ``CodeLengthError``)
before anything reaches Milvus; the command line prints one line and exits 2 for a bad argument
or input, 1 for an error; the service answers 422. A write of many batches whose last row is
bad writes nothing; a damaged Milvus Lite file and a collection of the old layout are refused
with a line saying what to do; credentials in a URI never appear in any output.
"""

import hashlib
import json
import logging
import os
import shutil
import sqlite3

import numpy as np
import pytest

from rsir_sdk import MilvusCodeStore, Retriever
from rsir_sdk.cli import main
from rsir_sdk.errors import CodeLengthError, CollectionMismatchError, InvalidInputError, StoreError
from testing import store_baseline as baseline

Z = np.zeros((1, 8), np.uint8)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- the Python API


BAD_LAST_ROWS = [
    ("metadata int over 64 bits", {"metadata": {"x": 2**70}}, InvalidInputError, "64 bits"),
    ("metadata NaN", {"metadata": {"x": float("nan")}}, InvalidInputError, "finite"),
    ("metadata infinity", {"metadata": {"x": float("-inf")}}, InvalidInputError, "finite"),
    ("metadata set", {"metadata": {"x": {1, 2}}}, InvalidInputError, "not a JSON value"),
    ("metadata key not a string", {"metadata": {1: 2}}, InvalidInputError, "keys must be strings"),
    ("metadata over 64 KiB", {"metadata": {"x": "a" * 70_000}}, InvalidInputError, "bytes"),
    ("id None", {"id": None}, InvalidInputError, "must be a string"),
    ("id bytes", {"id": b"abc"}, InvalidInputError, "must be a string"),
    ("id empty", {"id": ""}, InvalidInputError, "empty"),
    ("id lone surrogate", {"id": "x\udcff.jpg"}, InvalidInputError, "lone surrogate"),
    ("id repeated", {"id": "r0"}, InvalidInputError, "unique"),
    ("id over the limit", {"id": "é" * 3000}, InvalidInputError, "bytes in UTF-8"),
    ("label not a string", {"label": 5}, InvalidInputError, "must be a string"),
    ("label lone surrogate", {"label": "\ud800"}, InvalidInputError, "lone surrogate"),
    ("path over the limit", {"path": "p" * 5000}, InvalidInputError, "4096"),
]


@pytest.mark.parametrize("case", BAD_LAST_ROWS, ids=[c[0] for c in BAD_LAST_ROWS])
def test_a_bad_last_row_of_many_batches_writes_nothing(lite_store, case):
    _, change, exc, words = case
    n = 6001  # more than one batch of 5000
    ids = [f"r{i}" for i in range(n)]
    labels, paths = ["l"] * n, ["p"] * n
    meta: list = [{"i": i} for i in range(n)]
    if "id" in change:
        ids[-1] = change["id"]
    labels[-1] = change.get("label", labels[-1])
    paths[-1] = change.get("path", paths[-1])
    meta[-1] = change.get("metadata", meta[-1])
    before = lite_store.count()
    with pytest.raises(exc, match=words) as info:
        lite_store.upsert(ids, np.zeros((n, 8), np.uint8), labels, paths, meta)
    assert "\n" not in str(info.value)
    assert lite_store.count() == before == 1  # nothing of the 6000 good rows either


def test_bad_codes_and_shapes_write_nothing(lite_store):
    with pytest.raises(CodeLengthError):
        lite_store.upsert(["a", "b"], np.zeros((2, 7), np.uint8))  # Milvus Lite would take these
    with pytest.raises(CodeLengthError):
        lite_store.upsert(["a"], np.zeros((1, 8), np.float32))
    with pytest.raises(InvalidInputError, match="2 ids but 3 codes"):
        lite_store.upsert(["a", "b"], np.zeros((3, 8), np.uint8))
    with pytest.raises(InvalidInputError, match="one str"):
        lite_store.upsert("abc", np.zeros((3, 8), np.uint8))  # not three items a, b, c
    with pytest.raises(InvalidInputError, match="batch_size"):
        lite_store.upsert(["a"], Z, batch_size=0)
    assert lite_store.count() == 1


@pytest.mark.parametrize("kwargs, words", [
    ({"k": 1.9}, "k must be an integer"), ({"k": "5"}, "k must be an integer"),
    ({"k": True}, "k must be an integer"), ({"k": 0}, "between 1 and 16384"),
    ({"k": -1}, "between 1 and 16384"), ({"k": 20000}, "between 1 and 16384"),
    ({"radius": 2.7}, "radius must be an integer"), ({"radius": -1}, "radius must be >= 0"),
    ({"radius": "2"}, "radius must be an integer"),
    ({"filter": 5}, "filter must be a dict"), ({"filter": ["label"]}, "filter must be a dict"),
    ({"filter": {"label": []}}, "empty list"), ({"filter": {"label": 5}}, "must be strings"),
    ({"filter": {"x": float("nan")}}, "finite"), ({"filter": {"x": {"a": 1}}}, "values must be"),
    ({"filter": {3: "a"}}, "keys must be strings"), ({"filter": "label == '\ud800'"}, "surrogate"),
    ({"filter": "label =="}, "invalid filter expression"),
    ({"filter": "no_such_field == 1"}, "invalid filter expression"),
    ({"filter": '"abc"'}, "invalid filter expression"),
    # Milvus names only its executor here ("Operator::GetOutput failed for [Operator:..."])
    ({"filter": "label in [1, 2]"}, r"^invalid filter expression 'label in \[1, 2\]': Milvus "
                                    r"could not evaluate it; compare each field with values of "
                                    r"its type \(id, label and path are strings"),
])
def test_bad_search_arguments(lite_store, kwargs, words, capfd):
    with pytest.raises(InvalidInputError, match=words) as info:
        lite_store.search(Z, **{"k": 3, **kwargs})
    assert "\n" not in str(info.value)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no pymilvus log line, no gRPC line


def test_bad_ids_for_reads_and_deletes(lite_store):
    with pytest.raises(InvalidInputError, match="one str"):
        lite_store.get("r0")
    with pytest.raises(InvalidInputError, match="must be a string"):
        lite_store.delete([None])
    assert lite_store.delete(["missing", "r5"]) == 0 and lite_store.count() == 1


def test_retriever_refuses_before_encoding(lite_retriever):
    r = lite_retriever
    for kwargs in ({"k": 1.9}, {"k": "5"}, {"radius": 2.7}, {"filter": 5}, {"filter": {"label": []}}):
        with pytest.raises(InvalidInputError):
            r.search("/no/such/image.jpg", **{"k": 3, **kwargs})  # refused before reading it
    with pytest.raises(InvalidInputError, match="must be a string"):
        r.add_codes(Z, [None])  # not stored as "None"
    with pytest.raises(InvalidInputError, match="one str"):
        r.add_codes(np.zeros((3, 8), np.uint8), "abc")
    with pytest.raises(InvalidInputError, match="finite"):
        r.add_images(["/no/such.jpg"], ids=["x"], metadata=[{"v": float("nan")}])
    assert r.count() == 1


def test_service_maps_invalid_input_to_422():
    pytest.importorskip("starlette")
    from rsir_sdk.serve.errors import classify
    from rsir_sdk.serve.inputs import _int

    assert classify(InvalidInputError("k must be an integer")) == ("InvalidInputError", 422)
    for value in (1.9, 2.0, True):
        with pytest.raises(Exception) as info:
            _int(value, "k")
        assert classify(info.value)[1] == 422


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lite_store(tmp_path_factory):
    with MilvusCodeStore(str(tmp_path_factory.mktemp("bad") / "b.db"), "bad", bits=64) as s:
        s.upsert(["keep"], Z, ["l"], ["p"], [{"a": 1}])
        yield s


@pytest.fixture(scope="module")
def lite_retriever(tmp_path_factory, rp_bundle):
    with Retriever(rp_bundle[0], uri=str(tmp_path_factory.mktemp("badr") / "r.db"),
                   collection="r") as r:
        r.add_codes(Z, ["keep"])
        yield r


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, sample_images, rp_bundle):
    """A Milvus Lite file with 40 sample scenes in collection ``scenes``; its sha256."""
    d = tmp_path_factory.mktemp("cli")
    archive = d / "archive"
    for p, label in sample_images[::5]:
        (archive / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, archive / label / p.name)
    db = d / "rsir.db"
    with Retriever(rp_bundle[0], uri=str(db), collection="scenes") as r:
        r.index(archive, label_from="parent")
    return db, archive, sample_images[5][0]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("extra, words", [
    (["-k", "0"], "k must be between 1 and 16384"), (["-k", "-1"], "k must be between"),
    (["-k", "20000"], "k must be between"), (["-k", "1.9"], "k must be an integer"),
    (["--radius", "-1"], "radius must be at least 0"), (["--radius", "2.7"], "radius must be an integer"),
    (["--filter", '{"label": []}'], "empty list"), (["--filter", "5"], "invalid filter expression"),
    (["--filter", "label =="], "invalid filter expression"),
    (["--filter", '{"label": '], "--filter must be a JSON object"),
    (["--filter", '{"label": {"a": 1}}'], "values must be"),
    (["--search-params", "[1]"], "--search-params must be a JSON object"),
])
def test_cli_bad_search_arguments_exit_2_with_one_line(indexed, rp_bundle, capsys, extra, words):
    db, _, query = indexed
    before = digest(db)
    code, out, err = run(capsys, "search", rp_bundle[0], query, "--uri", db, "--collection",
                         "scenes", *extra)
    line = one_line(err)
    assert code == 2 and out == "" and words in line and line.startswith("rsir search")
    assert digest(db) == before


def test_cli_errors_exit_1_with_one_line(indexed, rp_bundle, capsys, tmp_path):
    db, archive, query = indexed
    before = digest(db)
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        unwritable = tmp_path / "ro" / "g.html"
        if os.access(tmp_path / "ro", os.W_OK):  # root ignores the mode: use a missing parent
            unwritable = tmp_path / "file" / "g.html"
            (tmp_path / "file").write_text("a file, not a folder")
        code, _, err = run(capsys, "search", rp_bundle[0], query, "--uri", db, "--collection",
                           "scenes", "--html", unwritable)
        assert code == 1 and "cannot write the gallery" in one_line(err)
    finally:
        os.chmod(tmp_path / "ro", 0o700)
    binary = tmp_path / "report.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    code, _, err = run(capsys, "index", rp_bundle[0], archive, "--uri", db, "--collection",
                       "scenes", "--retry-failed", binary, "--no-progress")
    assert code == 1 and "report" in one_line(err)
    code, _, err = run(capsys, "index", rp_bundle[0], archive, "--uri", db, "--collection",
                       "scenes", "--upsert-batch", "0", "--no-progress")
    assert code == 2 and "upsert-batch" in one_line(err)
    code, _, err = run(capsys, "search", rp_bundle[0], query, "--uri", db, "--collection", "bad-name")
    assert code == 2 and "collection names" in one_line(err)
    assert digest(db) == before


def test_credentials_never_reach_output(capsys, rp_bundle, tmp_path):
    uri = "http://reader:s3cret-pass@127.0.0.1:9"  # nothing listens there
    for argv in (["collections", "--uri", uri], ["collections", "--uri", uri, "--json"],
                 ["search", rp_bundle[0], tmp_path / "q.jpg", "--uri", uri],
                 ["drop", "x", "--uri", uri, "--yes"]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and "s3cret" not in out + err and "reader" not in out + err
        assert "***@127.0.0.1:9" in one_line(err)


# ----------------------------------------------------------------------------- damaged files


def test_a_damaged_lite_file_is_refused_quickly_and_left_alone(tmp_path, rp_bundle, sample_images,
                                                               capsys):
    import time

    db = tmp_path / "d.db"
    rng = np.random.default_rng(0)
    with MilvusCodeStore(str(db), "items", bits=64) as s:
        s.upsert([f"img/{i:05d}.jpg" for i in range(1000)],
                 rng.integers(0, 256, (1000, 8), dtype=np.uint8),
                 [f"class{i % 10}" for i in range(1000)], metadata=[{"i": i} for i in range(1000)])
    data = bytearray(db.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 20_000] = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))
    before = digest(db)
    t0 = time.perf_counter()
    with pytest.raises(StoreError, match="is damaged") as info:
        MilvusCodeStore(str(db), "items")
    assert "\n" not in str(info.value) and "re-index" in str(info.value)
    for argv in (["collections", "--uri", db],
                 ["search", rp_bundle[0], sample_images[0][0], "--uri", db, "--collection", "items"],
                 ["index", rp_bundle[0], sample_images[0][0].parent, "--uri", db, "--collection",
                  "items", "--no-progress"]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and "damaged" in one_line(err) and out == ""
    assert time.perf_counter() - t0 < 30  # no retry loop (217 s before)
    assert digest(db) == before  # nothing written

    not_sqlite = tmp_path / "text.db"
    not_sqlite.write_text("hello, I am not a database" * 100)
    code, _, err = run(capsys, "collections", "--uri", not_sqlite)
    assert code == 1 and "not a Milvus Lite database file" in one_line(err)

    # another program's SQLite database is refused, not filled with Milvus Lite's tables
    theirs = tmp_path / "theirs.db"
    con = sqlite3.connect(theirs)
    con.execute("CREATE TABLE visits (who TEXT)")
    con.execute("INSERT INTO visits VALUES ('me')")
    con.commit()
    con.close()
    before = digest(theirs)
    for argv in (["index", rp_bundle[0], sample_images[0][0].parent, "--uri", theirs,
                  "--collection", "items", "--no-progress"], ["collections", "--uri", theirs]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and "SQLite database of another program" in one_line(err), err
    assert digest(theirs) == before


# ----------------------------------------------------------------------------- old layout


def test_old_layout_is_refused_with_how_to_rebuild(tmp_path, rp_bundle, sample_images, capsys):
    db = str(tmp_path / "old.db")
    baseline.make_format1_collection(db, "scenes")
    with pytest.raises(CollectionMismatchError, match="older rsir-sdk") as info:
        MilvusCodeStore(db, "scenes")
    assert f"rsir drop scenes --uri {db} --yes" in str(info.value)
    archive = sample_images[0][0].parent
    code, _, err = run(capsys, "index", rp_bundle[0], archive, "--uri", db, "--collection", "scenes",
                       "--no-progress")
    assert code == 1 and "rsir drop scenes" in one_line(err)
    code, out, _ = run(capsys, "collections", "--uri", db)
    assert code == 0 and "older rsir-sdk" in out
    code, out, err = run(capsys, "drop", "scenes", "--uri", db)
    assert code == 2 and "--yes" in one_line(err)
    code, out, err = run(capsys, "drop", "scenes", "--uri", db, "--yes")
    assert code == 0 and "dropped collection scenes (1 items)" in out, err
    code, out, err = run(capsys, "index", rp_bundle[0], archive, "--uri", db, "--collection",
                         "scenes", "--no-progress", "--json")
    assert code == 0 and json.loads(out)["count"] == 20, err
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    con.close()


# ----------------------------------------------------------------------------- a real server


@pytest.mark.server
def test_server_credentials_and_bad_filters(server_uri, rp_bundle, sample_images, tmp_path, capsys):
    secret_uri = server_uri.replace("http://", "http://root:Milvus-s3cret@")
    archive = tmp_path / "a"
    for p, label in sample_images[:12]:
        (archive / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, archive / label / p.name)
    html = tmp_path / "g.html"
    outputs = []
    for argv in (["index", rp_bundle[0], archive, "--uri", secret_uri, "--collection", "creds",
                  "--no-progress"],
                 ["index", rp_bundle[0], archive, "--uri", secret_uri, "--collection", "creds",
                  "--no-progress", "--json"],
                 ["collections", "--uri", secret_uri], ["collections", "--uri", secret_uri, "--json"],
                 ["search", rp_bundle[0], sample_images[0][0], "--uri", secret_uri, "--collection",
                  "creds", "--json", "--html", html]):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        outputs.append(out + err)
    outputs.append(html.read_text())
    assert all("s3cret" not in o for o in outputs) and any("***@127.0.0.1" in o for o in outputs)
    with MilvusCodeStore(server_uri, "creds") as s:
        before = s.count()
    for extra, words in ((["--filter", "label =="], "invalid filter expression"),
                         (["--filter", '{"label": []}'], "empty list"),
                         (["-k", "0"], "k must be between")):
        code, out, err = run(capsys, "search", rp_bundle[0], sample_images[0][0], "--uri",
                             secret_uri, "--collection", "creds", *extra)
        line = one_line(err)
        assert code == 2 and words in line and "s3cret" not in line
    with MilvusCodeStore(server_uri, "creds") as s:
        with pytest.raises(InvalidInputError, match="64 bits"):
            s.upsert([f"n{i}" for i in range(5001)], np.zeros((5001, 8), np.uint8),
                     metadata=[{}] * 5000 + [{"x": 2**70}])
        assert s.count() == before == 12
        s.drop()


def test_no_dependency_log_lines(capfd, tmp_path):
    """pymilvus logs every failed call with a traceback unless silenced; gRPC's C core too."""
    with MilvusCodeStore(str(tmp_path / "q.db"), "q", bits=64) as s:
        s.upsert(["a"], Z)
        for expr in ("label ==", "pk in []", 'label == "A\\u{41}B"', "label like 5"):  # the last
            # one crashes the Milvus Lite 2.5.1 server: its output goes to a log file
            with pytest.raises((InvalidInputError, StoreError)):
                s.count(expr)
    logging.getLogger("rsir_sdk").info("nothing")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_a_request_that_kills_the_milvus_lite_server_costs_only_itself(tmp_path, monkeypatch):
    """``label like 5`` makes Milvus Lite 2.5.1's server process die. It is refused before it is
    sent; and when a request does kill the server (the check taken away here to reach the
    crash on purpose), that request fails in one line and the next one starts a new server:
    the store keeps working, its rows intact (a service had answered 503 until restarted)."""
    from rsir_sdk.store import keys, lite

    db = str(tmp_path / "crash.db")
    with MilvusCodeStore(db, "q", bits=64) as s:
        s.upsert(["a", "b"], Z[:1].repeat(2, axis=0), ["forest", "fort"])
        for expr in ("label like 5", "id LIKE 5.5", 'metadata["x"] like true', "label like"):
            with pytest.raises(InvalidInputError, match="like takes a quoted pattern"):
                s.count(expr)
        assert s.count('label like "fo%"') == 2 and s.count('label == "I like 5"') == 0
        assert lite.server_alive(db) is True
        # an integer division by zero kills it too (a service's read client took it down for
        # everyone): refused before it is sent, whatever form the zero takes
        for expr in ("id == 1/0", "t % 0 == 0", "t % -0 == 0", "id == 1/(1-1)", "id == 1/0x0",
                     'metadata["a"] == 5 % (3-3)', "id == 1/00"):
            with pytest.raises(InvalidInputError, match="take a nonzero number on their right"):
                s.count(expr)
            with pytest.raises(InvalidInputError, match="nonzero number"):
                s.search(Z[:1], k=1, filter=expr)
        assert s.count("t % 86400 == 1") == 0 and s.count('label like "%/%" or t % 7 == 1') == 0
        assert lite.server_alive(db) is True
        monkeypatch.setattr(keys, "check_like_patterns", lambda expression: None)
        for _ in range(2):  # the second crash read the first one's log, removed since: a 503
            with pytest.raises(InvalidInputError, match="invalid filter expression 'label like "
                                                        "5'.*stopped on it and starts again"):
                s.count("label like 5")
            assert lite.server_alive(db) is not True  # it did die
            assert s.count() == 2                      # and the next request works
        monkeypatch.setattr(keys, "check_divisors", lambda expression: None)
        with pytest.raises(StoreError) as died:    # the division by zero, let through on purpose
            s.count("t % 0 == 0")
        said = str(died.value)                    # one line, no log prefix of the server's
        assert "crashed on that request" in said and "schema_util" not in said, said
        assert s.count() == 2
        s.upsert(["c"], Z[:1])
        assert s.count() == 3 and {h.id for h in s.search(Z[:1], k=5)[0]} == {"a", "b", "c"}
    with MilvusCodeStore(db, "q") as s:
        assert s.count() == 3
    with MilvusCodeStore(db, "q") as s:  # a filter that parses but cannot be evaluated
        with pytest.raises(InvalidInputError, match="invalid filter expression"):
            s.count("label in [1, 2]")
        assert s.count() == 3


def test_index_reports_an_item_the_store_refuses_and_goes_on(tmp_path, rp_bundle, sample_images):
    """A value the store refuses (here NaN metadata from a listing) fails that image alone."""
    from rsir_sdk.archive import ArchiveListing, Item

    root = sample_images[0][0].parent
    items = [Item(p.name, p.name, str(root), "x", {"cloud": v})
             for (p, _), v in zip(sample_images[:3], (0.1, float("nan"), 2**70 - 1))]
    listing = ArchiveListing(root, items, "csv")
    with Retriever(rp_bundle[0], uri=str(tmp_path / "i.db"), collection="i") as r:
        summary = r.index(listing)
        assert summary.indexed == 1 and [f.id for f in summary.failed] == [i.id for i in items[1:]]
        assert {f.stage for f in summary.failed} == {"write"}
        assert "finite" in summary.failed[0].reason and "64 bits" in summary.failed[1].reason
        again = r.index(listing)
        assert again.skipped == 1 and again.indexed == 0 and len(again.failed) == 2
        assert r.count() == 1


def test_a_file_name_that_is_not_utf8_is_reported_not_indexed(tmp_path, rp_bundle, sample_images,
                                                               capsys):
    archive = tmp_path / "arch"
    archive.mkdir()
    shutil.copyfile(sample_images[0][0], archive / "good.jpg")
    with open(os.fsencode(archive) + b"/bad\xff\xfe.jpg", "wb") as fh:
        fh.write(sample_images[1][0].read_bytes())
    report = tmp_path / "failed.csv"
    db = tmp_path / "u.db"
    for argv in (["--json"], []):
        code, out, err = run(capsys, "index", rp_bundle[0], archive, "--uri", db, "--collection",
                             "u", "--no-progress", "--report", report, *argv)
        assert code == 3 and "Traceback" not in err, err
        assert "file name is not valid UTF-8" in out
    assert "not valid UTF-8" in report.read_text(encoding="utf-8")
    with MilvusCodeStore(str(db), "u") as s:
        assert s.count() == 1 and [i.id for i in s.get(["good.jpg"])] == ["good.jpg"]


def test_milvus_messages_become_one_clean_line():
    """Messages as Milvus Lite 2.5.1 and the 2.3.5 server send them (research of issue 11)."""
    from rsir_sdk.store import rpc

    lite_assert = baseline.milvus_error(2000, 'Assert "fields_.find(field_id) != fields_.end()" at '
                                  "/workspace/milvus-lite/src/Schema.h:178\n: segcore error")
    err = rpc.store_error(lite_assert, "count in 'c'")
    assert isinstance(err, StoreError) and "\n" not in str(err) and "/workspace" not in str(err)
    retried = baseline.milvus_error(1, "[query] Retry run out of 3 retry times, message=Invalid expr: "
                                 "label ==: invalid parameter")
    err = rpc.store_error(retried, "count", expression="label ==")
    assert isinstance(err, InvalidInputError) and str(err).startswith("invalid filter expression")
    assert "Retry run out" not in str(err)
    damaged = baseline.milvus_error(2000, 'Assert "suc" => failed to parse insert data from records')
    assert rpc.is_damage(rpc.message(damaged))
    creds = baseline.milvus_error(2, "Fail connecting to server on http://root:pw@db:19530")
    assert "pw" not in str(rpc.store_error(creds, "search"))
