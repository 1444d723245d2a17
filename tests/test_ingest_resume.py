"""`rsir index` killed with SIGKILL at many points and re-run: nothing lost, nothing duplicated.

Each run is a real process running the real command line; a small driver arms a kill at one
point (collection just opened, part-way through an upsert batch, right after an upsert, inside
the encoder, inside a decoding thread, at a random moment) and SIGKILLs its own process there.
The Milvus Lite server of a killed run outlives it for a moment; the next run must wait for it
(``rsir_sdk.store.lite.wait_for_lite_file``), which the test does not do for it.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from rsir_sdk import Encoder, MilvusCodeStore
from rsir_sdk.failures import read_report

ROOT = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent(
    r"""
    import os, random, signal, sys, threading, time
    kind, n = sys.argv[1], int(sys.argv[2])
    from rsir_sdk import cli, encode_pipeline, encoder, store

    calls = {"upsert": 0, "encode": 0, "decode": 0}
    lock = threading.Lock()

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    upsert = store.MilvusCodeStore.insert  # the write rsir index makes (ids checked absent)

    def patched_upsert(self, ids, codes, *rest, **kw):
        calls["upsert"] += 1
        if kind == "mid-upsert" and calls["upsert"] == n:  # half the batch reaches Milvus
            h = len(ids) // 2
            upsert(self, ids[:h], codes[:h], *[None if x is None else x[:h] for x in rest], **kw)
            die()
        out = upsert(self, ids, codes, *rest, **kw)
        if kind == "after-upsert" and calls["upsert"] == n:
            die()
        if kind == "random" and calls["upsert"] == 1:  # some random moment from here on
            threading.Timer(random.uniform(0.0, 0.3), die).start()
        return out

    store.MilvusCodeStore.insert = patched_upsert
    encode_arrays = encoder.Encoder.encode_arrays

    def patched_encode(self, *a, **kw):
        calls["encode"] += 1
        if kind == "in-encoder" and calls["encode"] == n:
            die()
        return encode_arrays(self, *a, **kw)

    encoder.Encoder.encode_arrays = patched_encode
    prepare = encode_pipeline._prepare

    def patched_prepare(*a, **kw):
        with lock:
            calls["decode"] += 1
            hit = kind == "in-decode" and calls["decode"] == n
        if hit:
            die()
        if kind == "sigint" and calls["decode"] == n:  # Ctrl-C while images are in flight
            os.kill(os.getpid(), signal.SIGINT)
        if kind == "random":  # slow enough that the random kill lands before the end
            time.sleep(0.005)
        return prepare(*a, **kw)

    encode_pipeline._prepare = patched_prepare
    if kind == "after-open":  # the collection is open, nothing is indexed yet
        from rsir_sdk import retriever_writes

        def patched_ingest(*a, **kw):
            die()

        retriever_writes.ingest = patched_ingest
    sys.exit(cli.main(sys.argv[3:]))
    """
)


def build_archive(root: Path, sample_images) -> tuple[list[str], list[str]]:
    """300 real scenes (the 200 sample JPEGs + 100 re-saved as mirrored PNGs) and 2 bad files."""
    good = []
    for p, label in sample_images:
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, root / label / p.name)
        good.append(f"{label}/{p.name}")
    for p, label in sample_images[::2]:
        dst = root / "mirrored" / label / (p.stem + ".png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        ImageOps.mirror(Image.open(p).convert("RGB")).save(dst)
        good.append(f"mirrored/{label}/{p.stem}.png")
    (root / "bad").mkdir()
    (root / "bad" / "empty.jpg").write_bytes(b"")
    (root / "bad" / "cut.jpg").write_bytes(sample_images[0][0].read_bytes()[:500])
    return sorted(good), ["bad/cut.jpg", "bad/empty.jpg"]


def test_sigkill_at_many_points_then_rerun_indexes_each_image_once(
    tmp_path, sample_images, rp_bundle
):
    archive = tmp_path / "archive"
    good, bad = build_archive(archive, sample_images)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    db = tmp_path / "rsir.db"
    report = tmp_path / "failed.csv"
    args = ["index", str(rp_bundle[0]), str(archive), "--uri", str(db), "--collection", "scenes",
            "--label-from", "top", "--batch-size", "8", "--upsert-batch", "16", "--workers", "2",
            "--report", str(report), "--no-progress", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def rsir(kind: str, n: int = 0) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(driver), kind, str(n), *args], env=env,
                              capture_output=True, text=True, timeout=300)

    for kind, n in [("after-open", 0), ("mid-upsert", 2), ("after-upsert", 1), ("in-encoder", 3),
                    ("in-decode", 10), ("mid-upsert", 1), ("random", 0)]:
        res = rsir(kind, n)
        assert res.returncode == -signal.SIGKILL, (kind, n, res.returncode, res.stderr[-2000:])

    final = rsir("none")
    assert final.returncode == 3, final.stderr[-2000:]  # finished; the two bad files failed
    import json

    summary = json.loads(final.stdout)
    assert summary["indexed"] + summary["skipped"] == len(good)
    assert summary["skipped"] > 0 and summary["indexed"] > 0  # the killed runs did real work
    assert summary["count"] == len(good)
    assert sorted(f.id for f in read_report(report)) == bad

    again = rsir("none")
    assert again.returncode == 3 and json.loads(again.stdout)["skipped"] == len(good)
    assert json.loads(again.stdout)["indexed"] == 0

    with MilvusCodeStore(str(db), "scenes", create=False) as s:
        ids = list(s.iter_ids())  # one per stored row
        assert len(ids) == len(set(ids)) == s.count() == len(good)  # each id once
        assert sorted(ids) == good  # exactly the archive's good images
        items = {it.id: it for it in s.get(good)}
    want = Encoder(rp_bundle[0]).encode([archive / i for i in good])
    got = np.stack([items[i].code for i in good])
    assert (got == want).all()  # the right code for every id
    assert {items[i].label for i in good} == {p.parent.name for p, _ in sample_images} | {"mirrored"}


def test_ctrl_c_writes_what_was_encoded_and_exits_130(tmp_path, sample_images, rp_bundle):
    archive = tmp_path / "archive"
    good, bad = build_archive(archive, sample_images)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = ["index", str(rp_bundle[0]), str(archive), "--uri", str(tmp_path / "r.db"),
            "--batch-size", "8", "--upsert-batch", "64", "--report", str(tmp_path / "f.csv"),
            "--no-progress", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # SIGINT back to its default in the child (a suite run as a background job inherits it
    # ignored, and then no KeyboardInterrupt would ever come). The fault handler prints every
    # thread's stack if the child dies by a signal instead (seen once: SIGABRT, empty stderr).
    res = subprocess.run([sys.executable, str(driver), "sigint", "60", *args],
                         env={**env, "PYTHONFAULTHANDLER": "1"},
                         capture_output=True, text=True, timeout=300,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert res.returncode == 130, res.stderr[-2000:]
    assert "re-run the same command to resume" in res.stderr
    res = subprocess.run([sys.executable, str(driver), "none", "0", *args], env=env,
                         capture_output=True, text=True, timeout=300)
    import json

    summary = json.loads(res.stdout)
    # no upsert batch (64) was full at the interrupt: what was encoded was written on the way out
    assert 16 <= summary["skipped"] < len(good) and summary["count"] == len(good)
