"""Damaged and oversized images: the user sees rsir's one line, never the decoders' own output
(tifffile's log records, Pillow's warnings), and `--max-pixels` decides how large an image may be,
above Pillow's own guard too (rsir_sdk.decoding). Real files, the real `rsir` command in a child
process (so warnings reach stderr as they would for a user, not pytest's recorder)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rsir_sdk import Retriever
from rsir_sdk.errors import ImageLoadError

tifffile = pytest.importorskip("tifffile")


def _rsir(*args, cwd, code: str = "pass") -> subprocess.CompletedProcess:
    """``rsir ARGS`` in a child process in ``cwd``; ``code`` runs first (e.g. to set a Pillow
    limit)."""
    prog = f"import sys; {code}; from rsir_sdk.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", prog, *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, sample_images):
    root = tmp_path_factory.mktemp("damaged") / "archive"
    (root / "ok").mkdir(parents=True)
    shutil.copyfile(sample_images[0][0], root / "ok" / "a.jpg")
    bad = root / "bad"
    bad.mkdir()
    bands = np.random.default_rng(0).integers(0, 4000, (64, 64, 5), dtype=np.uint16)
    tifffile.imwrite(bad / "full.tif", bands, photometric="minisblack", planarconfig="contig")
    (bad / "trunc.tif").write_bytes((bad / "full.tif").read_bytes()[:300])
    (bad / "header.tif").write_bytes((bad / "full.tif").read_bytes()[:8])
    (bad / "full.tif").unlink()
    Image.new("1", (9600, 9600)).save(bad / "bomb_warning.png")  # 92 M pixels: Pillow warns
    return root


def _quiet(stderr: str) -> None:
    """No traceback, no dependency log record, no Python warning (rsir's own line may name the
    decoder whose error it reports)."""
    for noise in ("Traceback", "Warning:", "warnings.warn", "site-packages"):
        assert noise not in stderr, stderr
    assert not re.search(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) tifffile", stderr, re.M), stderr


def test_index_reports_damaged_files_in_its_own_words(damaged, rp_bundle, tmp_path):
    db = tmp_path / "rsir.db"
    proc = _rsir("index", rp_bundle[0], damaged, "--uri", db, "--collection", "c",
                 "--label-from", "parent", "--no-progress", "--max-pixels", "90000000",
                 "--report", tmp_path / "failed.csv", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr      # indexed the good image, reported the rest
    _quiet(proc.stderr)
    assert re.search(r"indexed +1 images", proc.stdout) and re.search(r"failed +3 ", proc.stdout), \
        proc.stdout
    for name in ("trunc.tif", "header.tif"):
        proc = _rsir("search", rp_bundle[0], damaged / "bad" / name, "--uri", db,
                     "--collection", "c", cwd=tmp_path)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        _quiet(proc.stderr)
        assert proc.stderr.startswith("rsir search: ") and name in proc.stderr
    # under search's 100 M-pixel limit, over Pillow's warning threshold: searched, no warning
    proc = _rsir("search", rp_bundle[0], damaged / "bad" / "bomb_warning.png", "--uri", db,
                 "--collection", "c", cwd=tmp_path)
    assert proc.returncode == 0 and "ok/a.jpg" in proc.stdout and proc.stderr == "", proc.stderr


def test_max_pixels_is_honoured_above_pillows_guard(rp_bundle, sample_images, tmp_path):
    """With Pillow's guard set below a 64 x 64 scene, the library says which limit refused it
    (and leaves Pillow's global alone); `rsir index` with its default 100 M --max-pixels reads it."""
    (tmp_path / "a" / "x").mkdir(parents=True)
    Image.open(sample_images[0][0]).convert("RGB").save(tmp_path / "a" / "x" / "s.png")
    limit = "import PIL.Image; PIL.Image.MAX_IMAGE_PIXELS = 1000"
    proc = _rsir("index", rp_bundle[0], tmp_path / "a", "--uri", tmp_path / "r.db",
                 "--collection", "c", "--no-progress", code=limit, cwd=tmp_path)
    assert proc.returncode == 0 and re.search(r"indexed +1 images", proc.stdout), \
        proc.stdout + proc.stderr
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000
    try:
        with Retriever(rp_bundle[0], uri=str(tmp_path / "lib.db"), collection="c") as r:
            with pytest.raises(ImageLoadError, match="over Pillow's limit of 2000 pixels"):
                r.add_images([tmp_path / "a" / "x" / "s.png"], ids=["s"])
        assert Image.MAX_IMAGE_PIXELS == 1000
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def test_ray_actors_decode_under_the_drivers_pillow_guard(rp_bundle):
    """`rsir index --engine ray` raises Pillow's guard in the driver; the actors (other
    processes) are built with the driver's value (rsir_sdk.ray_ingest._pillow_guard)."""
    from rsir_sdk.ray_ingest import EncodeActor, _pillow_guard

    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 150_000_001
        guard = _pillow_guard()
        Image.MAX_IMAGE_PIXELS = saved                   # as in a fresh worker process
        EncodeActor(str(rp_bundle[0]), {}, None, 1, pillow=guard)
        assert Image.MAX_IMAGE_PIXELS == 150_000_001
    finally:
        Image.MAX_IMAGE_PIXELS = saved
