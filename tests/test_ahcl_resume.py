"""AHCL training: an interrupted run resumed from its checkpoint ends where an uninterrupted one does;
the CLI reports bad archives as errors, not tracebacks."""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rsir_sdk.splits import make_split  # noqa: E402
from rsir_train.ahcl import train_ahcl  # noqa: E402
from rsir_train.cli import main  # noqa: E402
from rsir_train.dataset import open_training_archive as read_folder  # noqa: E402
from rsir_train.errors import TrainingError  # noqa: E402
from rsir_train.testing import SAMPLE_ARCHIVE, tiny_config  # noqa: E402

pytestmark = pytest.mark.train


class _Stop(Exception):
    pass


def test_resume_continues_exactly(tmp_path):
    arch = read_folder(SAMPLE_ARCHIVE)
    split = make_split(arch, "80-20", 0)
    cfg = tiny_config(bits=16, outer=3, inner=1, lr_steps=(2,))
    full = train_ahcl(arch, split, cfg, work_dir=tmp_path / "a")

    def stop_after_two(event):
        if event.get("event") == "outer" and event["outer"] == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train_ahcl(arch, split, cfg, work_dir=tmp_path / "b", progress=stop_after_two)
    events = []
    resumed = train_ahcl(arch, split, cfg, work_dir=tmp_path / "b", resume=True, progress=events.append)
    assert events[0] == {"event": "resumed", "outer_done": 2}
    assert np.array_equal(full.V, resumed.V)
    assert [h["outer"] for h in resumed.history] == [1, 2, 3]
    assert resumed.metrics["map_query_vs_learned_db"] == pytest.approx(
        full.metrics["map_query_vs_learned_db"], abs=1e-9)
    with pytest.raises(TrainingError, match="another configuration"):
        train_ahcl(arch, split, tiny_config(bits=16, outer=4, inner=1), work_dir=tmp_path / "b",
                   resume=True)


def _bad_archive(tmp_path, kind):
    from PIL import Image

    root = tmp_path / kind
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    if kind == "corrupt":
        (root / "a" / "bad.jpg").write_bytes(b"garbage")
    elif kind == "empty":
        (root / "c").mkdir()
    elif kind == "stray":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "stray.png")
    elif kind == "single":
        (root / "c").mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "c" / "0.png")
    return root


@pytest.mark.parametrize("kind,message", [
    ("corrupt", "cannot be decoded: a/bad.jpg"),
    ("empty", "holds no images"),
    ("stray", "not in a class folder"),
    ("single", "fewer than 2 images"),
])
def test_cli_reports_bad_archives(tmp_path, capsys, kind, message):
    root = _bad_archive(tmp_path, kind)
    rc = main(["train", "ahcl", "--data", str(root), "--bits", "8", "--out", str(tmp_path / "o"),
               "--backbone", "small_cnn", "--no-pretrained", "--outer", "1", "--inner", "1", "-q"])
    assert rc == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("rsir train ahcl: ") and err.count("\n") == 1


def test_cli_skip_corrupt_trains_and_reports(tmp_path, capsys):
    root = _bad_archive(tmp_path, "corrupt")
    rc = main(["train", "ahcl", "--data", str(root), "--bits", "8", "--out", str(tmp_path / "o"),
               "--backbone", "small_cnn", "--no-pretrained", "--outer", "1", "--inner", "1",
               "--skip-corrupt", "--crop", "16", "--resize", "0", "--num-samples", "0", "-q"])
    assert rc == 0
    import json

    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["training"]["skipped"][0][0] == "a/bad.jpg"
    assert manifest["database"]["count"] == 4


def test_cli_prints_each_progress_line_once(tmp_path):
    """Without -q the printer shows each outer iteration; the log records of the same events
    (marked rsir_train.progress_log.SHOWN) are dropped from the CLI's log, other records stay."""
    import subprocess
    import sys

    root = _bad_archive(tmp_path, "corrupt")
    proc = subprocess.run(
        [sys.executable, "-m", "rsir_train", "train", "ahcl", "--data", str(root), "--bits", "8",
         "--out", str(tmp_path / "o"), "--backbone", "small_cnn", "--no-pretrained", "--outer", "2",
         "--inner", "1", "--skip-corrupt", "--crop", "16", "--resize", "0", "--num-samples", "0",
         "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert out.count("outer 1") == 1 and out.count("outer 2") == 1, out
    assert "outer 1/2: loss=" in proc.stdout   # and how many there are
    assert "inputs ready in" in proc.stderr      # a record the printer does not show is kept
    # the finished run says where its checkpoints stay and how big they are
    work = tmp_path / "o.work"
    assert work.is_dir() and f"checkpoints kept in {work}, " in proc.stdout, proc.stdout[-500:]
    assert re.search(r"checkpoints kept in .*, [0-9.]+ MB, safe to delete", proc.stdout)


def test_cli_leaves_a_host_programs_log_handlers_alone(tmp_path, capsys):
    """Run in a program that set up its logging: its handler gets no filter from `rsir train`."""
    import logging

    from rsir_train.progress_log import drop_shown

    root = _bad_archive(tmp_path, "corrupt")
    host = logging.StreamHandler()
    logging.getLogger().addHandler(host)
    try:
        rc = main(["train", "ahcl", "--data", str(root), "--bits", "8", "--out",
                   str(tmp_path / "o"), "--backbone", "small_cnn", "--no-pretrained", "--outer", "1",
                   "--inner", "1", "--skip-corrupt", "--crop", "16", "--resize", "0",
                   "--num-samples", "0"])
        assert rc == 0 and drop_shown not in host.filters
        assert all(drop_shown not in h.filters for h in logging.getLogger().handlers)
    finally:
        logging.getLogger().removeHandler(host)
