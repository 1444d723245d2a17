"""One API, two transports: the same scenario through a `Retriever` on a real Milvus Lite file and
through a `RemoteRetriever` against a real `rsir serve` (uvicorn subprocess on 127.0.0.1, its own
copy of the same Lite file, same bundle), compared result by result, field by field.

Both start from one collection (40 sample scenes written in-process, then the file copied), run
every verb of `rsir_sdk.RetrievalAPI` in the same order with the same arguments (dict and string
filters, radius, batch sizes, an archive with one broken image indexed with a failure report, the
bundle's learned codes), and must give equal hits, items, counts, summaries, reports and error
classes. The public signatures of both classes must be the Protocol's.

A second scenario does the same with a bundle that has a fine code (issue 20): writes carrying
fine codes, the default ranking ordered by them, the appearance mode, edge codes with both
parts, duplicates, and the errors of each.
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

pytest.register_assert_rewrite("serve_support")
from serve_support import WRITE, ServerProcess, copy_db  # noqa: E402

from rsir_sdk import Retriever  # noqa: E402
from rsir_sdk.api import INFO_KEYS, RetrievalAPI  # noqa: E402
from rsir_sdk.errors import InvalidInputError  # noqa: E402
from rsir_sdk.failures import read_report  # noqa: E402
from rsir_sdk.hits import Hit, StoredItem  # noqa: E402
from rsir_sdk.serve.client import RemoteRetriever  # noqa: E402

pytest_plugins = ["serve_support"]

COLLECTION = "parity"
BASE = 40            # sample scenes in the collection both sides start from
LEARNED = 12         # learned database codes in the bundle
VERBS = ("search", "search_batch", "search_codes", "range_search", "add_images", "add_codes",
         "add_learned_codes", "index", "prepare_for_search", "duplicates", "delete", "get",
         "count", "info", "close")


@pytest.fixture(scope="module")
def world(sample_images, tmp_path_factory):
    """Bundle (with learned codes), the two Lite copies, the archive root and the server."""
    from onnx_models import build_random_projection_bundle

    d = tmp_path_factory.mktemp("parity")
    rng = np.random.default_rng(3)
    bundle = d / "rp64-learned"
    build_random_projection_bundle(bundle, bits=64, size=32, seed=11, database={
        "codes": rng.integers(0, 256, (LEARNED, 8), dtype=np.uint8),
        "ids": [f"learned/{i}" for i in range(LEARNED)], "labels": ["Forest", "River"] * 6,
        "paths": [f"learned/{i}.jpg" for i in range(LEARNED)], "kind": "learned"})
    paths = [p.resolve() for p, _ in sample_images]
    labels = [label for _, label in sample_images]
    base = d / "base" / "rsir.db"
    base.parent.mkdir()
    with Retriever(bundle, uri=str(base), collection=COLLECTION) as r:
        r.add_images(paths[:BASE], ids=[f"s/{i}" for i in range(BASE)], labels=labels[:BASE],
                     metadata=[{"n": i, "sensor": "S2" if i % 2 else "L8"} for i in range(BASE)],
                     footprints=[_place(i) for i in range(BASE)],
                     times=[_when(i) for i in range(BASE)])
    root = (d / "root").resolve()
    for i in range(150, 156):                      # a small labelled archive, one broken file
        dst = root / "small" / labels[i] / paths[i].name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(paths[i], dst)
    (root / "small" / labels[150] / "broken.jpg").write_bytes(b"not a jpeg")
    server = ServerProcess(
        [bundle, "--uri", copy_db(base, d / "remote"), "--collection", COLLECTION,
         "--archive-root", root, "--allow-index"], d / "serve.log",
        env={"RSIR_WRITE_TOKEN": WRITE})
    yield {"bundle": bundle, "local_db": copy_db(base, d / "local"), "root": root,
           "paths": paths, "labels": labels, "server": server, "dir": d}
    assert server.stop() == 0, server.log[-3000:]


def _place(i: int) -> Any:
    """Item i's footprint: a box on a grid round Toulouse, a point, one across 180°, or none."""
    if i % 9 == 4:
        return None
    if i % 7 == 3:
        return (179.95, -17.0 + 0.01 * i, -179.9, -16.9 + 0.01 * i)
    w, s = 1.40 + 0.05 * (i % 8), 43.50 + 0.04 * (i // 8)
    return (round(w, 6), round(s, 6)) if i % 5 == 1 else (round(w, 6), round(s, 6),
                                                          round(w + 0.03, 6), round(s + 0.02, 6))


def _when(i: int) -> str | None:
    return None if i % 6 == 5 else f"20{18 + i % 6}-{1 + i % 12:02d}-{1 + i % 28:02d}T10:30:00Z"


#: place and period searches of the scenario (issue 22)
BOX = (1.5, 43.55, 1.62, 43.7)
ACROSS = (179.0, -20.0, -179.0, -15.0)
NEAR = (1.6, 43.6, 9_000.0)
PERIOD = ("2019-01-01", "2021-06-30")


def _error(call: Callable[[], Any]) -> type | None:
    try:
        call()
    except Exception as exc:  # the class is what is compared
        return type(exc)
    return None


def _searches(r: RetrievalAPI, w: dict[str, Any]) -> dict[str, Any]:
    """Reads of every kind, after the scenario's writes."""
    q = w["paths"][3]
    codes = np.stack([item.code for item in r.get(["s/1", "s/2", "code/0"])])
    return {
        "search": r.search(q, k=10),
        "search bytes dict filter": r.search(q.read_bytes(), k=5, filter={"label": "Forest"}),
        "search string filter": r.search(q, k=20, filter='label == "Forest"'),
        "search radius": r.search(q, k=50, radius=20),
        "search metadata any-of": r.search(q, k=8, filter={"sensor": ["S2"], "n": [1, 3, 5]}),
        "search_batch": r.search_batch(w["paths"][:5], k=7, batch_size=2),
        "search_batch filtered": r.search_batch(w["paths"][5:8], k=4, filter={"sensor": "L8"},
                                                radius=30),
        "search_codes dict": r.search_codes(codes, k=5, filter={"label": ["Forest", "River"]}),
        "search_codes string": r.search_codes(codes[0].tobytes(), k=6,
                                              filter='label in ["Forest", "River"]'),
        "range_search": r.range_search(q, radius=18),
        "range_search filtered": r.range_search(q, radius=30, filter={"sensor": "S2"}),
        "count": r.count(), "count dict": r.count({"label": "Forest"}),
        "count string": r.count('label == "Forest"'),
        "search bbox": r.search(q, k=10, bbox=BOX),
        "search bbox across 180 + time": r.search(q, k=10, bbox=ACROSS, time=PERIOD),
        "search near + time + filter": r.search(q.read_bytes(), k=6, near=NEAR, time=PERIOD,
                                                filter={"sensor": "S2"}),
        "search_batch near": r.search_batch(w["paths"][:3], k=4, near=NEAR, batch_size=2),
        "search_codes bbox radius": r.search_codes(codes, k=5, radius=40, bbox=BOX),
        "range_search period": r.range_search(q, radius=30, time=("2020-01-01", None)),
        "count bbox": r.count(bbox=BOX), "count near": r.count(near=NEAR),
        "count period string": r.count({"label": ["Forest", "River"]}, time="2019/2020"),
    }


def _errors(r: RetrievalAPI) -> dict[str, Any]:
    q = b"\xff"  # never read: each call fails on its arguments first
    return {
        "k=0": _error(lambda: r.search(q, k=0)), "k='3'": _error(lambda: r.search(q, k="3")),
        "radius=-1": _error(lambda: r.search_codes(np.zeros((1, 8), np.uint8), radius=-1)),
        "filter=5": _error(lambda: r.count(5)),  # type: ignore[arg-type]
        "filter empty list": _error(lambda: r.search(q, filter={"label": []})),
        "bad expression": _error(lambda: r.count("label ==")),
        "get one string": _error(lambda: r.get("s/1")),  # type: ignore[arg-type]
        "repeated ids": _error(lambda: r.add_codes(np.zeros((2, 8), np.uint8), ["a", "a"])),
        "no ids for bytes": _error(lambda: r.add_images([b"\xff"])),
        "bad ingest option": _error(lambda: r.index("small", engine="spark")),
        "bbox south > north": _error(lambda: r.search(q, bbox=(0, 10, 1, 5))),
        "near negative metres": _error(lambda: r.count(near=(1, 2, -1))),
        "time not ISO": _error(lambda: r.search_codes(np.zeros((1, 8), np.uint8),
                                                      time="soon/..")),
        "footprint latitude": _error(lambda: r.add_codes(np.zeros((1, 8), np.uint8), ["z"],
                                                         footprints=[(0.0, 91.0)])),
    }


def scenario(r: RetrievalAPI, w: dict[str, Any], archive: str, report: Path) -> dict[str, Any]:
    """Every verb, in order; what each returned."""
    paths, labels = w["paths"], w["labels"]
    out: dict[str, Any] = {"collection": r.collection}
    out["add_images"] = r.add_images(
        paths[40:50], ids=[f"a/{i}" for i in range(10)], labels=labels[40:50],
        metadata=[{"n": 40 + i, "sensor": "S2"} for i in range(10)], batch_size=4,
        footprints=[_place(40 + i) for i in range(10)], times=[_when(40 + i) for i in range(10)])
    codes = np.random.default_rng(5).integers(0, 256, (5, 8), dtype=np.uint8)
    out["add_codes"] = r.add_codes(codes, [f"code/{i}" for i in range(5)], ["Forest"] * 5,
                                   [f"edge/{i}.jpg" for i in range(5)], [{"edge": True}] * 5,
                                   footprints=[NEAR[:2], None, BOX, None, ACROSS],
                                   times=["2020-05-05", None, 1.6e9, None, "2019-12-31T23:00:00-02:00"])
    summary = r.index(archive, label_from="parent", report=report)
    out["index"] = (summary.total, summary.indexed, summary.skipped,
                    [(f.id, f.path, f.stage, f.reason) for f in summary.failed],
                    summary.collection, summary.ok)
    out["index report"] = read_report(report)
    again = r.index(archive, options=None, label_from="parent")
    out["index again"] = (again.total, again.indexed, again.skipped, len(again.failed))
    out["add_learned_codes"] = r.add_learned_codes()
    out["prepare_for_search"] = r.prepare_for_search()
    out.update(_searches(r, w))
    out["get"] = r.get(["code/1", "missing", "s/7", "learned/3", "s/7"])
    out["delete"] = r.delete(["a/0", "a/1", "missing"])
    out["count after delete"] = r.count()
    out["get deleted"] = r.get(["a/0"])
    info = r.info()
    out["info"] = {k: info[k] for k in INFO_KEYS if k not in ("archive_root", "providers")}
    out["info keys"] = set(INFO_KEYS) <= set(info)
    out.update(_errors(r))
    return out


def _same(name: str, a: Any, b: Any) -> None:
    if isinstance(a, list) and a and isinstance(a[0], StoredItem):
        assert [(x.id, x.code.tobytes(), x.label, x.path, x.metadata) for x in a] == \
            [(x.id, x.code.tobytes(), x.label, x.path, x.metadata) for x in b], name
        return
    assert a == b, f"{name}: local {a!r:.300} != remote {b!r:.300}"


def test_one_scenario_gives_the_same_results_locally_and_over_http(world):
    local = Retriever(world["bundle"], uri=str(world["local_db"]), collection=COLLECTION)
    remote = RemoteRetriever(world["server"].url, token=WRITE)
    try:
        assert isinstance(local, RetrievalAPI) and isinstance(remote, RetrievalAPI)
        want = scenario(local, world, str(world["root"] / "small"), world["dir"] / "local.csv")
        got = scenario(remote, world, "small", world["dir"] / "remote.csv")
    finally:
        local.close()
        remote.close()
    assert set(want) == set(got)
    for name in want:
        _same(name, want[name], got[name])
    # the results are not trivially equal: each part of the scenario did something
    total, indexed, skipped, failed, collection, ok = want["index"]
    assert (total, indexed, skipped, len(failed), collection, ok) == (7, 6, 0, 1, COLLECTION, False)
    assert failed[0][2] == "read" and len(want["index report"]) == 1
    assert want["index again"] == (7, 0, 6, 1) and want["add_learned_codes"] == LEARNED
    assert want["add_images"] == 10 and want["add_codes"] == 5 and want["delete"] == 2
    assert want["count"] == BASE + 10 + 5 + 6 + LEARNED == want["count after delete"] + 2
    assert 0 < want["count dict"] == want["count string"] < want["count"]
    assert want["search string filter"][:5] == want["search bytes dict filter"]
    # place and period: each search selected a part, and only items in the place and period
    assert 0 < want["count bbox"] < want["count"] and 0 < want["count near"] < want["count"]
    assert 0 < want["count period string"] < want["count"]
    assert want["search bbox"] and all(h.footprint is not None for h in want["search bbox"])
    assert want["search bbox"] != want["search"][:len(want["search bbox"])]
    across = want["search bbox across 180 + time"]
    assert across and all(h.footprint[0] > h.footprint[2] for h in across)   # type: ignore[index]
    assert all("2019-01-01" <= (h.time or "") <= "2021-07" for h in across)
    assert all(h.metadata.get("sensor") == "S2" for h in want["search near + time + filter"])
    assert all(h.distance <= 20 for h in want["search radius"])
    assert all(isinstance(h, Hit) for h in got["search"]) and len(got["search"]) == 10
    assert [it.id for it in got["get"]] == ["code/1", "s/7", "learned/3", "s/7"]
    assert got["get"][2].metadata == {"source": "learned"} and got["get deleted"] == []
    errors = {k: v for k, v in want.items() if isinstance(v, type) or v is None}
    assert errors and all(v is InvalidInputError for v in errors.values()), errors


def test_both_classes_have_the_protocols_signatures():
    for verb in VERBS:
        proto = inspect.signature(getattr(RetrievalAPI, verb))
        shape = [(p.name, p.kind, p.default) for p in proto.parameters.values()]
        for cls in (Retriever, RemoteRetriever):
            sig = inspect.signature(getattr(cls, verb))
            assert [(p.name, p.kind, p.default) for p in sig.parameters.values()] == shape, \
                f"{cls.__name__}.{verb}{sig} is not RetrievalAPI.{verb}{proto}"
    assert isinstance(inspect.getattr_static(RemoteRetriever, "collection"), property)
    assert isinstance(inspect.getattr_static(Retriever, "collection"), property)
    import rsir_sdk

    assert rsir_sdk.RetrievalAPI is RetrievalAPI and "RetrievalAPI" in rsir_sdk.__all__


def test_remote_index_stays_inside_the_archive_root_and_leaves_the_engine_to_the_service(world):
    from rsir_sdk import ArchiveListing
    from rsir_sdk.serve.client import HttpOptions
    from rsir_sdk.serve.errors import NotFoundError

    root = world["root"]
    outside = world["dir"] / "outside"
    (outside / "Forest").mkdir(parents=True, exist_ok=True)
    shutil.copy2(world["paths"][0], outside / "Forest" / "x.jpg")
    link = root / "link"
    if not link.exists():
        link.symlink_to(outside, target_is_directory=True)
    (root / "escape.csv").write_text(f"path,label\n{outside / 'Forest' / 'x.jpg'},Forest\n"
                                     f"../outside/Forest/gone.jpg,Forest\n")
    with RemoteRetriever(world["server"].url, token=WRITE) as r:
        n = r.count()
        with pytest.raises(InvalidInputError, match="2 image.s. of escape.csv lie outside"):
            r.index("escape.csv", label_column="label")
        assert r.ready() is True and r.collection == COLLECTION
        for where in ("../outside", str(outside), "link", "small/../../outside", "nothing-here"):
            with pytest.raises(NotFoundError, match="no such archive inside"):
                r.index(where, label_from="parent")
        for option in ({"engine": "ray"}, {"address": "ray://10.0.0.1:10001"},
                       {"bulk_dir": "/tmp/stage"}, {"prune": True}):
            with pytest.raises(InvalidInputError, match="decided by the service"):
                r.index("small", **option)
        with pytest.raises(InvalidInputError, match="decompression-bomb guard"):
            r.index("small", max_pixels=None)
        with pytest.raises(InvalidInputError, match="path on the service"):
            r.index(ArchiveListing.__new__(ArchiveListing))
        with pytest.raises(InvalidInputError, match="timeout only"):
            r.prepare_for_search(progress=print)
        assert r.count() == n                      # nothing refused wrote anything
    dead = RemoteRetriever(world["server"].url.rsplit(":", 1)[0] + ":9",
                           http=HttpOptions(retries=0, timeout=2))
    assert dead.ready() is False


# ------------------------------------------------------------------ fine codes (issue 20)
FINE_COLLECTION = "parity_fine"


@pytest.fixture(scope="module")
def fine_world(sample_images, tmp_path_factory):
    """A bundle with a fine code, a Lite file of 40 sample scenes and one exact copy, its two
    copies, and a server on one of them."""
    from fine_serve_support import build_fine_bundle

    d = tmp_path_factory.mktemp("parity-fine")
    bundle = build_fine_bundle(d / "fine-rp64")
    paths = [p.resolve() for p, _ in sample_images]
    labels = [label for _, label in sample_images]
    base = d / "base" / "rsir.db"
    base.parent.mkdir()
    with Retriever(bundle, uri=str(base), collection=FINE_COLLECTION) as r:
        r.add_images(paths[:BASE] + [paths[7]], ids=[f"s/{i}" for i in range(BASE)] + ["copy/7"],
                     labels=labels[:BASE] + [labels[7]],
                     metadata=[{"n": i} for i in range(BASE)] + [{"n": 7}])
    server = ServerProcess([bundle, "--uri", copy_db(base, d / "remote"), "--collection",
                            FINE_COLLECTION], d / "serve.log", env={"RSIR_WRITE_TOKEN": WRITE})
    yield {"bundle": bundle, "local_db": copy_db(base, d / "local"), "paths": paths,
           "labels": labels, "server": server}
    assert server.stop() == 0, server.log[-3000:]


def fine_scenario(r: RetrievalAPI, w: dict[str, Any]) -> dict[str, Any]:
    """Writes with fine codes, both modes on every search verb, duplicates, errors."""
    from rsir_sdk.encoder import Encoder

    paths, labels = w["paths"], w["labels"]
    both = Encoder(w["bundle"]).encode_both(paths[60:64])
    rng = np.random.default_rng(9)
    fine = rng.integers(0, 256, (3, 16), dtype=np.uint8)
    out: dict[str, Any] = {"info fine_bits": r.info().get("fine_bits")}
    out["add_images"] = r.add_images(paths[40:48], ids=[f"a/{i}" for i in range(8)],
                                     labels=labels[40:48], batch_size=3)
    out["add_codes"] = r.add_codes(both.codes[:3], ["code/0", "code/1", "code/2"],
                                   ["Edge"] * 3, fine=fine)
    q = paths[3]
    for mode in ("default", "appearance"):
        out[f"search {mode}"] = r.search(q, k=12, mode=mode)
        out[f"search filtered {mode}"] = r.search(q.read_bytes(), k=5, mode=mode,
                                                  filter={"label": labels[3]})
        out[f"search_batch {mode}"] = r.search_batch(paths[:4], k=6, batch_size=3, mode=mode)
        out[f"search_codes {mode}"] = r.search_codes(both.codes, k=8, fine=both.fine, mode=mode)
        out[f"range_search {mode}"] = r.range_search(q, radius=30, mode=mode)
    out["search_codes fine bytes"] = r.search_codes(both.codes[0].tobytes(), k=6,
                                                    fine=both.fine[0].tobytes())
    out["search_codes no fine"] = r.search_codes(both.codes, k=8)
    out["search_codes own fine"] = r.search_codes(both.codes[:3], k=3, fine=fine,
                                                  mode="appearance")
    out["duplicates"] = r.duplicates()
    out["duplicates 0 filtered"] = r.duplicates(0, {"label": labels[7]})
    out["count"] = r.count()
    out["errors"] = {
        "bad mode": _error(lambda: r.search(q, mode="similar")),
        "mode None": _error(lambda: r.search_codes(both.codes, mode=None)),  # type: ignore[arg-type]
        "appearance without fine": _error(lambda: r.search_codes(both.codes, mode="appearance")),
        "codes without fine": _error(lambda: r.add_codes(both.codes[:1], ["nofine"])),
        "fine width": _error(lambda: r.add_codes(both.codes[:1], ["w"], fine=both.codes[:1])),
        "fine count": _error(lambda: r.search_codes(both.codes[:2], fine=both.fine[:1])),
        "duplicates radius": _error(lambda: r.duplicates(-1)),
    }
    return out


def test_fine_codes_give_the_same_results_locally_and_over_http(fine_world):
    w = fine_world
    local = Retriever(w["bundle"], uri=str(w["local_db"]), collection=FINE_COLLECTION)
    remote = RemoteRetriever(w["server"].url, token=WRITE)
    try:
        want = fine_scenario(local, w)
        got = fine_scenario(remote, w)
    finally:
        local.close()
        remote.close()
    assert set(want) == set(got)
    for name in want:
        _same(name, want[name], got[name])
    # not trivially equal: fine codes took part, the modes differ, the copy is a duplicate
    assert want["info fine_bits"] == 128 and want["count"] == BASE + 1 + 8 + 3
    assert all(h.fine_distance is not None for h in want["search default"])
    assert all(h.fine_distance is None for hits in want["search_codes no fine"] for h in hits)
    assert all(h.distance == h.fine_distance for h in want["range_search appearance"])
    assert want["search default"] != want["search appearance"]
    assert ["copy/7", "s/7"] in want["duplicates"]
    assert want["duplicates 0 filtered"] == [["copy/7", "s/7"]]
    assert [hits[0].id for hits in want["search_codes own fine"]] == ["code/0", "code/1",
                                                                      "code/2"]
    errors = want["errors"]
    assert all(v is not None for v in errors.values()), errors
    assert errors["bad mode"] is InvalidInputError and errors["codes without fine"] is \
        InvalidInputError


def test_closed_and_pickled_retrievers_say_what_to_do(rp_bundle, tmp_path):
    """A closed RemoteRetriever raised httpx's RuntimeError (no rsir error, no remedy); a
    pickled Retriever failed on an RLock; an interruption did not survive unpickling."""
    import pickle

    from rsir_sdk.errors import StoreError
    from rsir_sdk.ingest import IngestSummary
    from rsir_sdk.ingest_report import IngestInterrupted
    from rsir_sdk.serve.client import RemoteRetriever

    remote = RemoteRetriever("http://127.0.0.1:9")    # nothing listens: no request is made
    remote.close()
    with pytest.raises(StoreError, match="is closed"):
        remote.info()
    assert remote.ready() is False
    with Retriever(rp_bundle[0], uri=str(tmp_path / "p.db"), collection="p") as local:
        for obj in (local, RemoteRetriever("http://127.0.0.1:9")):
            with pytest.raises(TypeError, match="cannot be pickled: open one in each process"):
                pickle.dumps(obj)
    summary = IngestSummary(collection="c", uri="u", total=3, indexed=2)
    back = pickle.loads(pickle.dumps(IngestInterrupted(summary)))
    assert back.summary.indexed == 2 and "after indexing 2 images" in str(back)
