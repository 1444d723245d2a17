"""Each store rule once (issue 23, item 4): one "storable item" rule for the archive lister and
the store, one writer (no mixin), no test or benchmark helper in the runtime wheel.
"""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsir_sdk import MilvusCodeStore
from rsir_sdk.archive import Item, check_item, read_manifest
from rsir_sdk.errors import InvalidInputError
from rsir_sdk.store import rows, writes
from rsir_sdk.store.schema import MAX_ID_LEN, MAX_LABEL_LEN, MAX_PATH_LEN

ROOT = Path(__file__).resolve().parents[1]


def _store_takes(item: Item) -> bool:
    """Whether the store's write check accepts the item as a collection would store it."""
    try:
        rows.build_columns([item.id], np.zeros((1, 8), np.uint8), 64, [item.label],
                           [str(item.file.absolute())], [dict(item.metadata)])
    except InvalidInputError:
        return False
    return True


def _cases(root: Path) -> dict[str, Item]:
    r = str(root)
    deep = "d/" * ((MAX_PATH_LEN - len(r)) // 2) + "x.jpg"  # absolute path over the limit
    return {
        "plain": Item("a.jpg", "a.jpg", r, "forest"),
        "any text": Item("O'Brien \"x\"\\\n\t🌲\x00.jpg", "o.jpg", r, "forêt 🌲"),
        "id surrogate": Item("x\udcff.jpg", "x.jpg", r),
        "path surrogate": Item("p.jpg", "p\udcff.jpg", r),
        "label surrogate": Item("l.jpg", "l.jpg", r, "\ud800"),
        "empty id": Item("", "e.jpg", r),
        "id at the limit": Item("i" * MAX_ID_LEN, "i.jpg", r),
        "id over the limit": Item("i" * (MAX_ID_LEN + 1), "i.jpg", r),
        "label over in bytes": Item("b.jpg", "b.jpg", r, "é" * (MAX_LABEL_LEN // 2 + 1)),
        "path over the limit": Item("deep.jpg", deep, r),
        "metadata nan": Item("n.jpg", "n.jpg", r, "", {"cloud": float("nan")}),
        "metadata int over 64 bits": Item("m.jpg", "m.jpg", r, "", {"n": 2**70}),
        "metadata plain": Item("q.jpg", "q.jpg", r, "", {"year": 2020, "sensor": "S2"}),
    }


def test_the_archive_and_the_store_refuse_and_accept_the_same_items(tmp_path):
    cases = _cases(tmp_path)
    verdicts = {name: check_item(item) is None for name, item in cases.items()}
    assert verdicts == {name: _store_takes(item) for name, item in cases.items()}
    assert [n for n, ok in verdicts.items() if ok] == [
        "plain", "any text", "id at the limit", "metadata plain"]
    # the ingestion asks the same rule (stage "write") with the path it stores
    for name, item in cases.items():
        assert check_item(item) == rows.problem(item.id, item.label, str(item.file.absolute()),
                                                item.metadata), name
    assert check_item(cases["path surrogate"]).startswith("file name is not valid UTF-8: b'")
    # and a real collection takes exactly the items the lister lets through
    with MilvusCodeStore(str(tmp_path / "r.db"), "r", bits=64) as store:
        for name, item in cases.items():
            args = ([item.id], np.zeros((1, 8), np.uint8), [item.label],
                    [str(item.file.absolute())], [dict(item.metadata)])
            if verdicts[name]:
                assert store.upsert(*args) == 1, name
            else:
                with pytest.raises(InvalidInputError):
                    store.upsert(*args)
        assert store.count() == 4


@settings(max_examples=300, deadline=None)
@given(item_id=st.text(max_size=40), label=st.text(max_size=20), path=st.text(max_size=40),
       meta=st.dictionaries(st.text(max_size=5), st.one_of(
           st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)), max_size=3))
def test_one_rule_for_any_text(item_id, label, path, meta):
    item = Item(item_id, path, "/archive", label, meta)
    assert (check_item(item) is None) == _store_takes(item)


def test_a_manifest_listing_reports_what_the_store_would_refuse(tmp_path):
    manifest = tmp_path / "m.csv"
    long_id, long_label = "i" * (MAX_ID_LEN + 1), "l" * (MAX_LABEL_LEN + 1)
    manifest.write_text("path,id,label,year\n"
                        f"a.jpg,a,forest,2020\nb.jpg,{long_id},forest,2021\n"
                        f"c.jpg,c,{long_label},2022\n", encoding="utf-8")
    listing = read_manifest(manifest)
    assert [it.id for it in listing.items] == ["a"]
    assert [(f.stage, f.reason.split(": ", 1)[0]) for f in listing.invalid] == [
        ("list", "m.csv line 3"), ("list", "m.csv line 4")]
    assert "id is 4097 bytes in UTF-8, over the 4096-byte limit" in listing.invalid[0].reason
    assert "label is 513 bytes in UTF-8, over the 512-byte limit" in listing.invalid[1].reason


def test_the_store_has_one_writer_and_no_mixin():
    assert MilvusCodeStore.__mro__ == (MilvusCodeStore, object)
    assert not any("Mixin" in name for name in dir(writes))
    for method in ("upsert", "insert", "bulk_insert"):  # thin: the writer does the work
        source = inspect.getsource(getattr(MilvusCodeStore, method))
        assert "self.writer." in source and "write_columns" not in source, method
    assert "create_collection" not in inspect.getsource(MilvusCodeStore)


def _build_wheel(tmp_path: Path) -> list[str]:
    """Build the runtime wheel from a copy of the checkout (tests, benchmarks and the testing
    helpers included, so that packaging has every chance to pick them up); its file names."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.db", "*.egg-info")
    for folder in ("rsir_sdk", "testing", "tests", "benchmarks"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, src / name)
    out = tmp_path / "wheel"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = out.glob("rsir_sdk-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_the_runtime_wheel_holds_no_test_or_benchmark_helper(tmp_path):
    names = _build_wheel(tmp_path)
    assert "rsir_sdk/store/collection.py" in names and "rsir_sdk/store/writes.py" in names
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"rsir_sdk"}, tops
    helpers = [n for n in names if any(w in n for w in (
        "baseline", "local_server", "testing", "conftest", "benchmarks", "tests/"))]
    assert helpers == []
    # and the helpers are where tests and benchmarks import them from
    assert (ROOT / "testing" / "store_baseline.py").is_file()
    assert (ROOT / "testing" / "store_local_server.py").is_file()
    assert not (ROOT / "rsir_sdk" / "store" / "baseline.py").exists()
    assert not (ROOT / "rsir_sdk" / "store" / "local_server.py").exists()
