"""The server path at scale, on a real Milvus 2.3.5 server: prepare-for-search, index choice,
column inserts, bulk load with its journal (killed and re-run), all through the public API.

Sizes are small (tens of thousands of rows) so that the suite stays quick; the figures at 1M and
10M rows are in docs/scale.md and benchmarks/search.py.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_store import stored_rows, weird_rows

from rsir_sdk import MilvusCodeStore
from rsir_sdk.codes import topk_bruteforce
from rsir_sdk.store import BulkOptions, server

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]


def clustered(n: int, seed: int, centres: int = 20, p: float = 0.04) -> np.ndarray:
    """Class-centred 64-bit codes: random centres, each bit flipped with probability p."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 2, (centres, 64), dtype=np.uint8)
    bits = c[rng.integers(0, centres, n)] ^ (rng.random((n, 64)) < p).astype(np.uint8)
    return np.packbits(bits, axis=1)


def test_prepare_for_search_serves_only_sealed_segments(server_uri):
    n = 30_000
    codes = clustered(n, 1)
    ids = [f"s{i:05d}" for i in range(n)]
    steps = []
    with MilvusCodeStore(server_uri, "prep", bits=64) as store:
        store.insert(ids, codes, labels=[f"c{i % 7}" for i in range(n)])
        before = store.index_info()
        # freshly inserted rows are in growing segments: nothing sealed is served yet
        assert sum(before["served_segments"].values()) < n == store.count()
        out = store.prepare_for_search(progress=steps.append)
        after = store.index_info()
        assert after["served_segments"] == after["sealed_segments"]
        assert sum(after["sealed_segments"].values()) == n
        assert after["indexed_rows"] == after["total_rows"] >= n and after["pending_index_rows"] == 0
        assert out["rows"] == n and out["index_type"] == "BIN_FLAT"  # auto: small, exact
        assert [s.step for s in steps][0] == "flush" and steps[-1].step == "done"
        hits = store.search_ids(codes[:50], k=10)
        _, want = topk_bruteforce(codes[:50], codes, 10)
        assert [h.distances.tolist() for h in hits] == want.tolist()
        assert all(h.ids[0] == ids[i] or h.distances[1] == 0 for i, h in enumerate(hits))
        store.drop()


@pytest.mark.parametrize("kind", ["clustered", "uniform"])
def test_auto_index_choice_and_nprobe_calibration(server_uri, monkeypatch, kind):
    """auto: IVF with a calibrated nprobe for structured codes; uniform codes (IVF would need
    every list) stay exact. The threshold is lowered so that 20,000 rows count as large."""
    monkeypatch.setattr(server, "AUTO_IVF_MIN_ROWS", 5_000)
    n = 20_000
    rng = np.random.default_rng(2)
    codes = clustered(n + 200, 3) if kind == "clustered" else rng.integers(0, 256, (n + 200, 8),
                                                                           dtype=np.uint8)
    db, queries = codes[:n], codes[n:]
    name = f"auto_{kind}"
    with MilvusCodeStore(server_uri, name, bits=64) as store:
        store.insert([str(i) for i in range(n)], db)
        out = store.prepare_for_search()
        info = store.index_info()
        cal = info["calibration"]
        assert cal["nlist"] == 16 and cal["queries"] > 50  # 20,000 rows in one segment
        if kind == "clustered":
            assert out["index_type"] == info["index_type"] == "BIN_IVF_FLAT"
            assert cal["recall"] >= 0.99 and cal["nprobe"] <= 4
            assert info["search_params"] == {"nprobe": cal["nprobe"]}
        else:
            assert out["index_type"] == info["index_type"] == "BIN_FLAT"
            assert cal["rejected"] == "BIN_IVF_FLAT" and cal["nprobe"] > 4
            assert info["search_params"] == {}
        got = np.array([h.distances for h in store.search_ids(queries, k=100)])
    _, exact = topk_bruteforce(queries, db, 100)
    recall = server.recall_at_k(exact.astype(np.int32), got)
    assert recall >= (0.97 if kind == "clustered" else 1.0), recall
    with MilvusCodeStore(server_uri, name) as again:  # recorded with the collection
        assert again.effective_search_params == info["search_params"]
        assert again.index_info()["policy"] == "auto"
        again.drop()


def test_insert_upsert_and_bulk_load_store_the_same_rows(server_uri, tmp_path):
    ids, codes, labels, paths, meta = weird_rows(5000)
    staging = tmp_path / "staging"
    with MilvusCodeStore(server_uri, "same_up", bits=64) as a, \
            MilvusCodeStore(server_uri, "same_ins", bits=64) as b, \
            MilvusCodeStore(server_uri, "same_bulk", bits=64) as c:
        a.upsert(ids, codes, labels, paths, meta)
        b.insert(ids, codes, labels, paths, meta)
        out = c.bulk_insert(ids, codes, labels, paths, meta, staging_dir=staging,
                            options=BulkOptions(chunk_rows=2000))
        with_nul = sum(1 for x in ids if "\x00" in x)
        assert out["inserted"] >= with_nul > 0  # the numpy import drops NULs: inserted instead
        assert out["chunks"] == -(-(5000 - out["inserted"]) // 2000) >= 2
        assert out["written"] == 5000 and out["count"] == 5000
        assert out["prepare"]["rows"] == 5000
        assert not staging.joinpath("same_bulk").exists()  # journal and files removed
        want = stored_rows(a, ids)
        assert stored_rows(b, ids) == want and stored_rows(c, ids) == want
        # the same call again: every id present, nothing written twice
        again = c.bulk_insert(ids, codes, labels, paths, meta, staging_dir=staging,
                              options=BulkOptions(prepare=False))
        assert again["skipped"] == 5000 and again["written"] == 0 and c.count() == 5000
        # a Session read right after a column write sees it (read-your-writes)
        b.insert(["fresh"], codes[:1])
        assert b.existing_ids(["fresh"]) == {"fresh"}
        for s in (a, b, c):
            s.drop()


BULK_DRIVER = textwrap.dedent(r"""
    import os, signal, sys
    import numpy as np
    from rsir_sdk import MilvusCodeStore
    from rsir_sdk.store import BulkOptions
    from rsir_sdk.store.connect import Connection

    uri, staging, kind, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    calls = []
    original = Connection.orm_call

    def patched(self, fn, *a, **kw):  # the kill lands around the store's bulk-import request
        if getattr(fn, "__name__", "") != "do_bulk_insert":
            return original(self, fn, *a, **kw)
        calls.append(1)
        if kind == "before-submit" and len(calls) == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        out = original(self, fn, *a, **kw)
        if kind == "after-submit" and len(calls) == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    Connection.orm_call = patched
    n = 40_000
    codes = np.random.default_rng(9).integers(0, 256, (n, 8), dtype=np.uint8)
    ids = [f"r{i:05d}" for i in range(n)]
    with MilvusCodeStore(uri, "bulk_killed", bits=64) as store:
        out = store.bulk_insert(ids, codes, labels=[f"L{i % 5}" for i in range(n)],
                                staging_dir=staging, options=BulkOptions(chunk_rows=10_000))
        print(out["count"], out["written"])
""")


def test_bulk_load_killed_and_rerun_imports_every_row_once(server_uri, tmp_path):
    """Killed before a task is created (the journal says 'submitting', no task), then killed
    right after one is created (the journal never heard of it), then run to the end."""
    driver = tmp_path / "driver.py"
    driver.write_text(BULK_DRIVER)
    staging = tmp_path / "staging"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def rsir(kind: str, nth: int = 0) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(driver), server_uri, str(staging), kind,
                               str(nth)], env=env, capture_output=True, text=True, timeout=600)

    first = rsir("before-submit", 2)  # chunk 0 imported, chunk 1 'submitting'
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    second = rsir("after-submit", 2)  # chunk 1 resubmitted; chunk 2's task made, then killed
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    with MilvusCodeStore(server_uri, "bulk_killed", create=False) as s:
        assert 0 < s.count() < 40_000
    last = rsir("none")
    assert last.returncode == 0, last.stderr[-2000:]
    assert last.stdout.split() == ["40000", "10000"]  # only the last chunk was left to write
    with MilvusCodeStore(server_uri, "bulk_killed", create=False) as s:
        ids = list(s.iter_ids())
        assert len(ids) == len(set(ids)) == s.count() == 40_000  # every row exactly once
        items = s.get(["r00000", "r39999", "r17777"])
        codes = np.random.default_rng(9).integers(0, 256, (40_000, 8), dtype=np.uint8)
        assert [it.code.tobytes() for it in items] == [codes[i].tobytes() for i in (0, 39999, 17777)]
        assert [it.label for it in items] == ["L0", "L4", "L2"]
        s.drop()
    assert not (staging / "bulk_killed").exists()
