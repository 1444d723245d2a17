"""Any Unicode text goes in and comes back byte for byte, on Milvus Lite and on a real server.

A hypothesis property test draws ids, labels, paths, metadata keys and values from arbitrary
Unicode (biased towards quotes, backslashes, line breaks, NUL, emoji and combining marks) and
runs upsert -> count -> get -> search with dict filters -> delete -> re-upsert (resume), and a
second one indexes an archive whose file and folder names are drawn the same way, twice. A
fixed archive with the names of issue 11 (``O'Brien.jpg``, ``forêt/``, ``x🌲/``, ``a\\b.jpg``, a
newline) goes through ``rsir index`` and back. Server examples are fewer (each Strong read
there costs about 0.2 s; the store reads with Session after the first).
"""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rsir_sdk import MilvusCodeStore, Retriever
from rsir_sdk.cli import main
from rsir_sdk.store.keys import canonical_value, digest

TRICKY = ["'", '"', "\\", "\\\\", "\n", "\r", "\r\n", "\t", "\x00", "\x1b", "\x7f", "\x85",
          "\u2028", "\ufeff", "\uffff", "\U0010ffff", "🌲", "👩‍👩‍👧", "e\u0301", "\u0301",
          "forêt", "O'Brien", "a\\b", "trail\\", '"x"', "${x}", "%s", "\\u0041", "\\n", "é"]

CHARS = st.characters(exclude_categories=("Cs",))  # anything but lone surrogates
TEXT = st.one_of(
    st.sampled_from(TRICKY),
    st.text(CHARS, min_size=1, max_size=12),
    st.lists(st.sampled_from(TRICKY) | st.text(CHARS, max_size=3), min_size=1, max_size=4).map("".join),
)
SCALAR = st.one_of(
    TEXT, st.integers(-(2**63), 2**63 - 1), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)


@st.composite
def batches(draw, max_items=6):
    ids = draw(st.lists(TEXT.filter(bool), min_size=1, max_size=max_items, unique=True))
    n = len(ids)
    labels = draw(st.lists(st.one_of(TEXT, st.just("")), min_size=n, max_size=n))
    paths = draw(st.lists(TEXT, min_size=n, max_size=n))
    keys = draw(st.lists(st.one_of(TEXT, st.just("")), min_size=1, max_size=3, unique=True))
    meta = [draw(st.dictionaries(st.sampled_from(keys), SCALAR | st.lists(SCALAR, max_size=3),
                                 max_size=3)) for _ in range(n)]
    codes = np.asarray(draw(st.lists(st.lists(st.integers(0, 3), min_size=8, max_size=8),
                                     min_size=n, max_size=n)), dtype=np.uint8)
    return ids, codes, labels, paths, meta


def same(a, b) -> bool:
    """Equal as stored JSON (types and float signs included)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def clear(store) -> None:
    """Start each example empty (a failed example may have left rows behind)."""
    if store.exists:
        store.delete(list(store.iter_ids()))


def check_roundtrip(store, batch):
    ids, codes, labels, paths, meta = batch
    n = len(ids)
    clear(store)
    before = store.count()
    assert store.upsert(ids, codes, labels, paths, meta) == n
    assert store.count() == before + n
    items = store.get(list(reversed(ids)))
    assert [i.id for i in items] == list(reversed(ids))
    for item in items:
        j = ids.index(item.id)
        assert item.id.encode("utf-8") == ids[j].encode("utf-8")
        assert (item.label, item.path) == (labels[j], paths[j])
        assert (item.code == codes[j]).all() and same(item.metadata, meta[j])
    assert store.existing_ids(ids + ["\x00absent"]) == set(ids)
    # dict filters: every column and metadata key, through digests only
    for j in range(n):
        for filt, match in (
            ({"id": ids[j]}, [ids[j]]),
            ({"label": labels[j]}, [i for i, lab in zip(ids, labels) if lab == labels[j]]),
            ({"path": [paths[j], "\n"]}, [i for i, p in zip(ids, paths) if p in (paths[j], "\n")]),
            *[({k: v}, [i for i, m in zip(ids, meta)
                        if k in m and canonical_value(m[k]) == canonical_value(v)])
              for k, v in meta[j].items() if not isinstance(v, list)],
        ):
            assert store.count(filt) == len(match), filt
            hits = store.search(codes[j], k=n, filter=filt)[0]
            assert sorted(h.id for h in hits) == sorted(match), filt
            assert [(h.distance, digest(h.id)) for h in hits] == sorted(
                (h.distance, digest(h.id)) for h in hits)
    gone, kept = ids[::2], ids[1::2]
    assert store.delete(gone + ["never stored"]) == len(gone)
    assert store.get(gone) == [] and store.count() == before + len(kept)
    assert store.existing_ids(ids) == set(kept)
    # resume: the ids present are found, the missing ones written again, nothing doubled
    missing = [i for i in ids if i not in store.existing_ids(ids)]
    idx = [ids.index(i) for i in missing]
    store.upsert(missing, codes[idx], [labels[i] for i in idx], [paths[i] for i in idx],
                 [meta[i] for i in idx])
    store.upsert(ids, codes, labels, paths, meta)  # a second full run: upsert replaces
    assert store.count() == before + n and store.existing_ids(ids) == set(ids)
    assert store.delete(ids) == n and store.count() == before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(batch=batches())
def test_any_text_round_trips_on_lite(lite_store, batch):
    check_roundtrip(lite_store, batch)


@pytest.fixture(scope="module")
def lite_store(tmp_path_factory):
    with MilvusCodeStore(str(tmp_path_factory.mktemp("lite") / "p.db"), "strings", bits=64) as s:
        yield s


@pytest.fixture(scope="module")
def server_store(server_uri):
    with MilvusCodeStore(server_uri, "strings_property", bits=64) as s:
        yield s
        s.drop()


@pytest.mark.server
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(batch=batches(max_items=4))
def test_any_text_round_trips_on_a_server(server_store, batch):
    check_roundtrip(server_store, batch)


# ----------------------------------------------------------------------------- archives

NAME = st.one_of(st.sampled_from(TRICKY), st.text(CHARS, min_size=1, max_size=8)).filter(
    lambda s: "/" not in s and "\x00" not in s and not s.startswith(".")
    and len(s.encode("utf-8")) < 200)


def write_archive(root: Path, files: list[str], sample_images) -> None:
    for i, rel in enumerate(files):
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        src = sample_images[i % len(sample_images)][0]
        Image.open(src).convert("RGB").resize((32, 32)).save(dst, format="PNG")


def check_archive(retriever: Retriever, files: list[str], sample_images) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d, "archive")
        write_archive(root, files, sample_images)
        before = retriever.count()
        first = retriever.index(root, label_from="parent", workers=1)
        assert first.failed == [] and first.indexed == len(files) and first.skipped == 0
        again = retriever.index(root, label_from="parent", workers=1)
        assert again.indexed == 0 and again.skipped == len(files)  # "all present"
        assert retriever.count() == before + len(files)
        items = retriever.get(files)
        assert [i.id for i in items] == files
        for item in items:
            assert item.path == str(root / item.id)
            assert item.label == (item.id.rsplit("/", 1)[0].rsplit("/", 1)[-1] if "/" in item.id else "")
            assert retriever.search_codes(item.code, k=len(files) + before)[0][0].distance == 0
            assert item.id in {h.id for h in retriever.search_codes(item.code, k=len(files),
                                                                     filter={"path": item.path})[0]}
        assert retriever.delete(files) == len(files) and retriever.count() == before


@st.composite
def archives(draw, max_files=5):
    folders = [f + "_d" for f in draw(st.lists(NAME, min_size=1, max_size=2, unique=True))]
    names = draw(st.lists(NAME, min_size=1, max_size=max_files, unique=True))
    files = []
    for i, name in enumerate(names):
        folder = folders[i % len(folders)] if i % 3 else ""
        files.append(f"{folder}/{name}.png" if folder else f"{name}.png")
    return sorted(set(files))


@pytest.fixture(scope="module", params=["lite", pytest.param("server", marks=pytest.mark.server)])
def archive_retriever(request, tmp_path_factory, rp_bundle):
    if request.param == "lite":
        uri = str(tmp_path_factory.mktemp("archives") / "a.db")
    else:
        uri = request.getfixturevalue("server_uri")
    with Retriever(rp_bundle[0], uri=uri, collection="archive_names") as r:
        yield r, request.param
        r.store.drop()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(files=archives())
def test_archives_with_any_names_index_and_resume(archive_retriever, sample_images, files):
    check_archive(archive_retriever[0], files, sample_images)


ISSUE_NAMES = ["O'Brien.jpg", "forêt/1.jpg", "x🌲/b.jpg", "a\\b.jpg", "new\nline.jpg",
               "tab\there.jpg", "quote\"d.jpg", "trail\\/c.jpg", "e\u0301/d.jpg", "nul-free/🌲.jpg"]


@pytest.mark.parametrize("where", ["lite", pytest.param("server", marks=pytest.mark.server)])
def test_issue_archive_indexes_completely_and_reruns_as_all_present(
    where, tmp_path, sample_images, rp_bundle, capsys, request
):
    root = tmp_path / "archive"
    for i, rel in enumerate(ISSUE_NAMES):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample_images[i * 7][0], root / rel)
    uri = str(tmp_path / "n.db") if where == "lite" else request.getfixturevalue("server_uri")
    args = ["index", str(rp_bundle[0]), str(root), "--uri", uri, "--collection", f"names_{where}",
            "--label-from", "parent", "--no-progress", "--json"]
    code = main(args)
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert code == 0 and err == "" and summary["indexed"] == len(ISSUE_NAMES)
    assert summary["failed"] == 0 and summary["count"] == len(ISSUE_NAMES)
    code = main(args)
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert code == 0 and summary["skipped"] == len(ISSUE_NAMES) and summary["indexed"] == 0
    with Retriever(rp_bundle[0], uri=uri, collection=f"names_{where}") as r:
        items = r.get(sorted(ISSUE_NAMES))
        assert [i.id for i in items] == sorted(ISSUE_NAMES)
        for item in items:  # each found by its own code, by id, path and label filters
            hits = r.search(root / item.id, k=1, filter={"id": item.id})
            assert [(h.id, h.distance) for h in hits] == [(item.id, 0)]
            assert item.id in {h.id for h in r.search_codes(item.code, k=20, filter={"label": item.label})[0]}
        assert r.delete(sorted(ISSUE_NAMES)) == len(ISSUE_NAMES) and r.count() == 0
        r.store.drop()
