"""`rsir index` / `rsir search` against a real Milvus server (PyPI milvus==2.3.5, embedded standalone).

The server (the session fixture ``server_uri`` of conftest.py) runs on 127.0.0.1 only and is
shared with the other server tests (tests/test_strings_roundtrip.py, tests/test_bad_input.py).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rsir_sdk import Encoder, MilvusCodeStore
from rsir_sdk.cli import main
from rsir_sdk.codes import topk_bruteforce
from rsir_sdk.store.keys import digest

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_index_and_search_on_a_server(server_uri, rp_bundle, sample_dir, sample_images, capsys):
    code, out, err = run(capsys, "index", rp_bundle[0], sample_dir, "--uri", server_uri,
                         "--collection", "scenes", "--label-from", "parent", "--no-progress", "--json",
                         "--prepare", "always")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["indexed"] == 200 and summary["count"] == 200  # Strong: visible at once
    # prepared: every row sealed and served by the query node (none left growing)
    assert summary["prepare"]["rows"] == 200 and summary["prepare"]["index_type"] == "BIN_FLAT"
    with MilvusCodeStore(server_uri, "scenes", create=False) as s:
        info = s.index_info()
        assert info["served_segments"] == info["sealed_segments"]
        assert sum(info["sealed_segments"].values()) == 200 and info["policy"] == "auto"
    query, label = sample_images[42]
    code, out, err = run(capsys, "search", rp_bundle[0], query, "--uri", server_uri,
                         "--collection", "scenes", "-k", "5", "--json")
    hits = json.loads(out)
    assert code == 0 and hits[0]["id"] == f"{label}/{query.name}" and hits[0]["distance"] == 0
    code, out, _ = run(capsys, "index", rp_bundle[0], sample_dir, "--uri", server_uri,
                       "--collection", "scenes", "--no-progress", "--json", "--label-from", "parent")
    assert code == 0 and json.loads(out)["skipped"] == 200
    code, out, _ = run(capsys, "collections", "--uri", server_uri)
    assert code == 0 and "scenes" in out and "200" in out


def test_bin_ivf_flat_index_on_a_server(server_uri, rp_bundle, sample_dir, sample_images, capsys):
    paths = [p for p, _ in sample_images]
    codes = Encoder(rp_bundle[0]).encode(paths)
    ids = [f"{label}/{p.name}" for p, label in sample_images]
    with MilvusCodeStore(server_uri, "ivf", bits=64, index_type="BIN_IVF_FLAT",
                         index_params={"nlist": 8}, search_params={"nprobe": 8}) as s:
        s.upsert(ids, codes)
        index = s.index_info()
        assert index["index_type"] == "BIN_IVF_FLAT" and index["metric_type"] == "HAMMING"
        assert index["params"]["nlist"] == "8" and index["policy"] == "fixed"
        hits = s.search(codes[:20], k=10)
    _, want = topk_bruteforce(codes[:20], codes, 10)
    assert [[h.distance for h in row] for row in hits] == want.tolist()  # nprobe = nlist: exact
    assert all(row[0].distance == 0 for row in hits)
    # the same through the command line
    code, out, err = run(capsys, "index", rp_bundle[0], sample_dir, "--uri", server_uri,
                         "--collection", "ivf_cli", "--index-type", "BIN_IVF_FLAT",
                         "--index-params", '{"nlist": 4}', "--no-progress", "--json")
    assert code == 0 and json.loads(out)["count"] == 200, err
    code, out, err = run(capsys, "search", rp_bundle[0], paths[7], "--uri", server_uri,
                         "--collection", "ivf_cli", "-k", "3", "--search-params", '{"nprobe": 4}',
                         "--json")
    assert code == 0 and json.loads(out)[0]["distance"] == 0, err


def test_sigkill_and_resume_on_a_server(server_uri, rp_bundle, sample_dir, tmp_path):
    from test_ingest_resume import DRIVER

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = ["index", str(rp_bundle[0]), str(sample_dir), "--uri", server_uri, "--collection",
            "resume", "--batch-size", "8", "--upsert-batch", "16", "--no-progress", "--json",
            "--report", str(tmp_path / "failed.csv")]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for kind, n in [("mid-upsert", 2), ("in-encoder", 5), ("none", 0)]:
        res = subprocess.run([sys.executable, str(driver), kind, str(n), *args], env=env,
                             capture_output=True, text=True, timeout=300)
        if kind == "none":
            assert res.returncode == 0, res.stderr[-2000:]
            summary = json.loads(res.stdout)
            assert summary["skipped"] > 0 and summary["count"] == 200
        else:
            assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    with MilvusCodeStore(server_uri, "resume", create=False) as s:
        ids = list(s.iter_ids())  # one per stored row
        assert len(ids) == len(set(ids)) == s.count() == 200


def test_exact_ties_and_read_your_writes_on_a_server(server_uri):
    """Ties by the digest of the id (the server returns a tie group in a different order each
    call), and a write is visible to the next read at once although reads after the first use
    Session consistency."""
    ties = sorted((f"t{i:02d}" for i in range(30)), key=digest)
    order = [ties[i] for i in np.random.default_rng(3).permutation(30)]
    q = np.full((1, 8), 255, np.uint8)
    with MilvusCodeStore(server_uri, "ties_ryw", bits=64) as store:
        for part in (order[:10], order[10:20], order[20:]):
            store.upsert(part, np.full((len(part), 8), 255, np.uint8))
        for k in (5, 29, 30):
            assert [h.id for h in store.search(q, k=k)[0]] == ties[:k]
        t0 = time.perf_counter()
        for i in range(8):
            name = f"new{i}"
            store.upsert([name], q, labels=[f"L{i}"])
            assert [x.id for x in store.get([name])] == [name]
            assert store.count({"label": f"L{i}"}) == 1
            assert [h.id for h in store.search(q, k=31)[0]] == sorted(ties + [name], key=digest)
            with MilvusCodeStore(server_uri, "ties_ryw") as other:  # another connection
                assert other.existing_ids([name]) == {name}
            assert store.delete([name]) == 1
            assert store.get([name]) == [] and store.count({"label": f"L{i}"}) == 0
        print(f"8 rounds of write/read/delete/read: {time.perf_counter() - t0:.1f}s")
        store.drop()


def test_index_through_a_bulk_load_on_a_server(server_uri, rp_bundle, sample_dir, tmp_path, capsys):
    staging = tmp_path / "staging"
    args = ["index", rp_bundle[0], sample_dir, "--uri", server_uri, "--collection", "bulk_cli",
            "--label-from", "parent", "--no-progress", "--json", "--bulk", staging]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["indexed"] == 200 and summary["count"] == 200
    assert summary["bulk"]["chunks"] == 1 and summary["bulk"]["count"] == 200
    assert summary["prepare"]["rows"] == 200  # a bulk load is always prepared for search
    assert not (staging / "bulk_cli").exists()  # files and journal removed
    code, out, _ = run(capsys, *args)
    assert code == 0 and json.loads(out)["skipped"] == 200
    code, out, err = run(capsys, *args, "--force")
    assert code == 2 and "--force" in err
    with MilvusCodeStore(server_uri, "bulk_cli", create=False) as s:
        ids = list(s.iter_ids())
        assert len(ids) == len(set(ids)) == 200
        s.drop()


def test_a_collection_left_not_loaded_is_loaded_when_opened(server_uri):
    """A run killed between creating a collection and loading it (a fraction of a second)
    left it not loaded: every later command failed "collection not loaded" and could not
    resume until the collection was dropped."""
    from rsir_sdk.store import fine

    rng = np.random.default_rng(5)
    codes, fine_codes = rng.integers(0, 256, (6, 8), np.uint8), rng.integers(0, 256, (6, 16), np.uint8)
    ids = [f"n{i}" for i in range(6)]
    with MilvusCodeStore(server_uri, "notload", bits=64, fine_bits=128) as store:
        store.upsert(ids, codes, fine=fine_codes)
        for name in ("notload",) + fine.companions("notload"):   # as the killed run left them
            store._conn.call("release_collection", name, what="test")
    with MilvusCodeStore(server_uri, "notload") as store:
        try:
            assert store.count() == 6 and store.existing_ids(ids) == set(ids)
            assert store.search(codes[2:3], k=1, fine=fine_codes[2:3])[0][0].id == "n2"
            hit = store.search(None, k=1, fine=fine_codes[4:5], mode="appearance")[0][0]
            assert hit.id == "n4" and hit.fine_distance == 0
        finally:
            store.drop()


def _lease_of(server_uri: str, name: str) -> str:
    from rsir_sdk.store.lease import LEASE_KEY

    with MilvusCodeStore(server_uri, name, create=False) as s:
        props = s._conn.call("describe_collection", name, what="test").get("properties") or {}
        return props.get(LEASE_KEY) or ""


def test_one_rsir_index_writes_to_a_server_collection_at_a_time(server_uri, rp_bundle,
                                                                sample_dir, capsys):
    """Two rsir index runs over one archive at once both found the ids absent and stored every
    row twice (counts doubled, get lost items, each plain re-run added more)."""
    from rsir_sdk.store.lease import LEASE_KEY, LEASE_S, WriterLease

    args = ["index", rp_bundle[0], sample_dir, "--uri", server_uri, "--collection", "leased",
            "--label-from", "parent", "--no-progress"]
    first = sample_dir / "Forest"
    code, _, err = run(capsys, *[first if a == sample_dir else a for a in args])
    assert code == 0, err
    assert _lease_of(server_uri, "leased") == ""                   # released at the end
    with MilvusCodeStore(server_uri, "leased") as store:
        try:
            lease = WriterLease(store).take()                     # another writer, alive
            code, _, err = run(capsys, *args)
            lines = [x for x in err.splitlines() if x.strip()]
            assert code == 1 and len(lines) == 1, err
            assert "is being written by another rsir index" in lines[0]
            lease.release()
            # a lease whose writer died (no beat for longer than LEASE_S) is taken over
            old = json.dumps({"owner": "gone", "host": "h", "pid": 1,
                              "beat": time.time() - LEASE_S - 5})
            store._conn.call("alter_collection_properties", "leased",
                             properties={LEASE_KEY: old}, what="test")
            code, _, err = run(capsys, *args)
            assert code == 0, err
            ids = list(store.iter_ids())   # the first run's 20 ids are relative to Forest/
            assert store.count() == len(ids) == len(set(ids)) == 220
        finally:
            store.drop()


def test_two_rsir_index_runs_at_once_into_a_new_server_collection(server_uri, rp_bundle,
                                                                  sample_dir):
    args = [sys.executable, "-m", "rsir_sdk.cli", "index", str(rp_bundle[0]), str(sample_dir),
            "--uri", server_uri, "--collection", "twoatonce", "--label-from", "parent",
            "--no-progress"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes and set(codes) <= {0, 1}, outs
    for (_, err), code in zip(outs, codes):
        if code == 1:
            assert "is being written by another rsir index" in err, err
    with MilvusCodeStore(server_uri, "twoatonce") as store:
        try:
            ids = list(store.iter_ids())
            assert store.count() == len(ids) == len(set(ids)) == 200, outs
        finally:
            store.drop()


def test_a_run_that_fails_while_starting_leaves_no_writer_lease(server_uri, rp_bundle,
                                                               sample_dir, tmp_path):
    """A failure after the lease was taken in IngestRun's set-up (a progress callback that
    raises, a report that cannot be written; a staging path that is a file) left its beat
    running: every later run of that process was refused."""
    from rsir_sdk import Bundle
    from rsir_sdk.archive import open_archive
    from rsir_sdk.ingest import IngestRun
    from rsir_sdk.options import IngestOptions

    blocker = tmp_path / "staging"
    blocker.write_text("a file where the staging folder should be")
    with MilvusCodeStore(server_uri, "leakcheck", bits=64) as store:
        store.create()
        try:
            def progress(_state):
                raise KeyboardInterrupt

            listing = open_archive(sample_dir, label_from="parent")
            identity = Bundle.load(rp_bundle[0]).identity()
            with pytest.raises(KeyboardInterrupt):
                IngestRun(store, identity, listing, IngestOptions(), progress=progress)
            assert _lease_of(server_uri, "leakcheck") == ""
            with pytest.raises(Exception):  # noqa: B017 - any failure of the set-up
                IngestRun(store, identity, listing, IngestOptions(bulk_dir=str(blocker)))
            assert _lease_of(server_uri, "leakcheck") == ""
        finally:
            store.drop()


def test_a_restarted_server_is_read_while_it_loads_again(tmp_path, rp_bundle, sample_dir,
                                                         sample_images, capsys):
    """A small run (under 10,000 rows: not prepared) ends flushed, its rows in sealed
    segments, so that they survive a server restart (unflushed rows were lost by one); after
    the restart the collections are loaded again for a while ("Loading"): a store opened then
    waits for that load instead of failing "collection not loaded"."""
    from testing.store_local_server import local_server

    data = tmp_path / "milvus"
    # the killed server's sessions stay in etcd until their lease runs out: 30 s by default,
    # which the restarted one waited out (about 55 s in all); 3 s here (its own sessions'
    # lease, the second server keeps the default)
    with local_server(data, keep=True, settings={"common.session.ttl": 3}) as server:
        code, _, err = run(capsys, "index", rp_bundle[0], sample_dir, "--uri", server.uri,
                           "--collection", "kept", "--label-from", "parent", "--no-progress")
        assert code == 0, err
        with MilvusCodeStore(server.uri, "kept", create=False) as s:
            assert sum(s.index_info()["sealed_segments"].values()) == len(sample_images)
        os.kill(server.pid, signal.SIGKILL)
        time.sleep(1)
    query, label = sample_images[7]
    with local_server(data, quick_handoff=True) as server:
        with MilvusCodeStore(server.uri, "kept", create=False) as s:
            assert s.count() == len(sample_images)
        code, out, err = run(capsys, "search", rp_bundle[0], query, "--uri", server.uri,
                             "--collection", "kept", "-k", "3", "--json")
        assert code == 0, err
        assert json.loads(out)[0]["id"] == f"{label}/{query.name}"


def test_an_index_type_without_parameters_gets_defaults_and_a_refused_one_leaves_nothing(
        server_uri, rp_bundle, sample_dir, capsys, caplog):
    """``--index-type BIN_IVF_FLAT``/``HNSW`` without ``--index-params`` failed ("nlist out of
    range") and left a collection that could not be loaded: every later run failed until
    ``rsir drop``. Now they get default build parameters; parameters the server refuses fail in
    one line and leave no collection behind."""
    for kind, key, value in (("BIN_IVF_FLAT", "nlist", 128), ("HNSW", "M", 16)):
        name = f"defaults_{kind.lower()}"
        code, _, err = run(capsys, "index", rp_bundle[0], sample_dir, "--uri", server_uri,
                           "--collection", name, "--no-progress", "--index-type", kind)
        assert code == 0, err
        with MilvusCodeStore(server_uri, name, create=False) as s:
            info = s.index_info()
            assert info["index_type"] == kind and int(info["params"][key]) == value, info
        # asked for another index later: it keeps its own, and says so (taken without a word)
        caplog.clear()
        code, _, err = run(capsys, "index", rp_bundle[0], sample_dir, "--uri", server_uri,
                           "--collection", name, "--no-progress", "--index-type", "BIN_FLAT")
        assert code == 0 and f"exists with a {kind} index and keeps it" in caplog.text, err
        with MilvusCodeStore(server_uri, name, create=False) as s:
            assert s.index_info()["index_type"] == kind
            s.drop()
    code, _, err = run(capsys, "index", rp_bundle[0], sample_dir, "--uri", server_uri,
                       "--collection", "refused_ivf", "--no-progress", "--index-type",
                       "BIN_IVF_FLAT", "--index-params", '{"nlist": 0}')
    assert code == 1 and len(err.strip().splitlines()) == 1 and "nlist" in err, err
    code, out, _ = run(capsys, "collections", "--uri", server_uri)
    assert code == 0 and "refused_ivf" not in out


def test_a_run_that_writes_nothing_leaves_no_collection_on_a_server(server_uri, rp_bundle,
                                                                    tmp_path, capsys):
    """A server run creates its collection before encoding (the writer lease lives in it); a
    run that then wrote nothing (every image failed, or it stopped first) used to leave an
    empty collection behind; it is dropped, as nothing is created on a Lite file."""
    archive = tmp_path / "broken"
    archive.mkdir()
    (archive / "a.jpg").write_bytes(b"not a jpeg")
    (archive / "b.png").write_bytes(b"")
    code, out, err = run(capsys, "index", rp_bundle[0], archive, "--uri", server_uri,
                         "--collection", "left_empty", "--no-progress", "--report",
                         tmp_path / "failed.csv")
    assert code == 3, err
    code, out, _ = run(capsys, "collections", "--uri", server_uri)
    assert code == 0 and "left_empty" not in out


def test_the_service_flushes_what_it_wrote_when_it_stops(server_uri, rp_bundle, tmp_path,
                                                         sample_images):
    """Items written over HTTP to a Milvus server sat in growing segments, which a server
    restart could lose; ``rsir serve`` stopping (SIGTERM) flushes them first."""
    sys.path.insert(0, str(ROOT / "tests"))
    from serve_support import WRITE, ServerProcess

    from rsir_sdk import Retriever
    from rsir_sdk.serve.client import RemoteRetriever

    name = "served_writes"
    paths = [p for p, _ in sample_images[:12]]
    with Retriever(rp_bundle[0], uri=server_uri, collection=name) as r:
        r.add_images(paths[:2], ids=["seed0", "seed1"])
        r.store.flush()
    server = ServerProcess([rp_bundle[0], "--uri", server_uri, "--collection", name],
                           tmp_path / "serve.log", env={"RSIR_WRITE_TOKEN": WRITE})
    try:
        with RemoteRetriever(server.url, token=WRITE) as w:
            assert w.add_images(paths[2:], ids=[f"http{i}" for i in range(10)]) == 10
        with MilvusCodeStore(server_uri, name, create=False) as s:
            assert sum(s.index_info()["sealed_segments"].values()) == 2   # not flushed yet
    finally:
        assert server.stop() == 0, server.log[-3000:]
    with MilvusCodeStore(server_uri, name, create=False) as s:
        assert s.count() == 12 and sum(s.index_info()["sealed_segments"].values()) == 12
        s.drop()


def test_learned_codes_written_to_a_server_end_flushed(server_uri, tiny_ahcl):
    """AHCL's learned database codes (160 rows here, under the 10,000 that prepare) were left
    in growing segments, which a server restart could lose; they end flushed now, as an
    ``rsir index`` run does."""
    from rsir_sdk import Retriever

    with Retriever(tiny_ahcl[0], uri=server_uri, collection="learned_flushed") as r:
        r.store.drop()
        n = r.add_learned_codes()
        info = r.store.index_info()
        assert n == r.count() and sum(info["sealed_segments"].values()) == n, info
        r.store.drop()


TWO_AT_ONCE = """
import sys
sys.path.insert(0, sys.argv[2])
from rsir_sdk import MilvusCodeStore
from testing.store_local_server import local_server
with local_server(sys.argv[1]) as server:
    with MilvusCodeStore(server.uri, "c", bits=64) as store:
        store.count()
    print(server.uri)
"""


def test_two_local_servers_started_at_the_same_moment_both_run(tmp_path):
    """The package scans component ports upwards from fixed ones and frees them before its
    server binds them, so two servers starting together took the same ports and one died
    ("cannot connect"): a test run beside CI took CI's server down that way. Then kernel-chosen
    free ports: one was taken by the other server's client socket before it was bound (CI,
    "bind: address already in use"). Now random free ports below the ephemeral range, chosen
    and bound by one server at a time."""
    runs = [subprocess.Popen([sys.executable, "-c", TWO_AT_ONCE, str(tmp_path / name), str(ROOT)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("a", "b")]
    answers = [r.communicate(timeout=240) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], [err[-400:] for _, err in answers]
    assert len({out.strip() for out, _ in answers}) == 2


def test_files_removed_since_indexing_are_counted_and_pruned_on_a_server(server_uri, rp_bundle,
                                                                         sample_images, tmp_path,
                                                                         capsys):
    """The count of items this archive no longer lists, and --prune, on a server (its count
    and the id scan read rows just written and deleted)."""
    import shutil

    archive = tmp_path / "archive"
    for p, label in sample_images[:8]:
        (archive / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, archive / label / p.name)
    base = ["index", rp_bundle[0], archive, "--uri", server_uri, "--collection", "pruned",
            "--no-progress", "--json"]
    assert run(capsys, *base)[0] == 0
    sorted(archive.rglob("*.jpg"))[0].unlink()
    code, out, err = run(capsys, *base)
    assert code == 0 and json.loads(out)["not_listed"] == 1, out + err
    code, out, err = run(capsys, *base, "--prune")
    assert code == 0 and json.loads(out)["pruned"] == 1 and json.loads(out)["count"] == 7, out
    with MilvusCodeStore(server_uri, "pruned", create=False) as s:
        assert len(list(s.iter_ids())) == 7
