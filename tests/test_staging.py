"""Bundles and reports are replaced whole: a kill while one is written leaves the old version
(or none), never a mix. Found by killing `rsir train ... --resume` at its first write to
model.onnx (a bundle that had worked then refused to load: "model.onnx does not match the
manifest's model_sha256") and `rsir duplicates --out` at its first write (the old complete
report emptied). Real ONNX models, real bundles, a real SIGKILL of a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from onnx_models import manifest_for, random_projection_model

from rsir_sdk import Bundle, Encoder, staging
from rsir_sdk.bundle_writer import BundleWriteError, update_manifest, write_bundle

SIZE, BITS = 32, 32
TESTS = Path(__file__).resolve().parent


def _model(seed: int):
    return random_projection_model(SIZE, SIZE, BITS, seed=seed)[0]


def _bundle(out: Path, seed: int, note: str) -> dict:
    manifest = manifest_for(BITS, SIZE, SIZE)
    manifest["training"] = {"note": note}
    return write_bundle(out, _model(seed), manifest)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _codes(out: Path) -> np.ndarray:
    pixels = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    return Encoder(out, threads=1).encode(list(pixels))


def test_a_rewritten_bundle_is_new_whole_and_keeps_the_users_other_files(tmp_path):
    out = tmp_path / "b"
    first = _bundle(out, 1, "first")
    (out / "notes.txt").write_text("mine")
    (out / "plots").mkdir()
    (out / "plots" / "pr.png").write_bytes(b"png")
    second = _bundle(out, 2, "second")
    assert first["model_sha256"] != second["model_sha256"]
    bundle = Bundle.load(out)
    assert bundle.manifest["training"]["note"] == "second"
    assert bundle.model_sha256 == second["model_sha256"]
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "plots" / "pr.png").read_bytes() == b"png"
    assert _hidden(tmp_path) == []                               # no stage left behind


def test_a_bundle_the_runtime_refuses_leaves_the_one_there(tmp_path):
    out = tmp_path / "b"
    _bundle(out, 1, "good")
    before = _codes(out)
    bad = manifest_for(BITS, SIZE, SIZE)
    bad["bits"] = 64                                    # the graph gives 32
    with pytest.raises(BundleWriteError, match="does not load, so it was not put there"):
        write_bundle(out, _model(2), bad)
    assert Bundle.load(out).manifest["training"]["note"] == "good"
    assert np.array_equal(_codes(out), before)
    assert _hidden(tmp_path) == []


def test_a_swap_killed_between_its_two_renames_is_undone_by_the_next_write(tmp_path):
    """Without renameat2 (macOS, Windows, some file systems) the swap is two renames; a kill
    between them leaves no bundle, and the old one under a hidden name: put back."""
    out = tmp_path / "b"
    old = _bundle(out, 1, "old")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        from onnx_models import manifest_for, random_projection_model
        from rsir_sdk import bundle_writer, staging

        staging._exchange = lambda a, b: False
        rename, calls = os.rename, []
        def killing_rename(a, b):
            calls.append(1)
            rename(a, b)
            if len(calls) == 1:   # the old folder moved aside, the new one not yet in place
                os.kill(os.getpid(), signal.SIGKILL)
        staging.os.rename = killing_rename
        bundle_writer.write_bundle({str(out)!r}, random_projection_model(32, 32, 32, seed=2)[0],
                                   manifest_for(32, 32, 32))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists() and any(n.startswith(".b.old-") for n in _hidden(tmp_path))
    staging.recover(out)
    assert Bundle.load(out).model_sha256 == old["model_sha256"]
    new = _bundle(out, 3, "after")
    assert Bundle.load(out).model_sha256 == new["model_sha256"] and _hidden(tmp_path) == []


def test_a_folder_that_cannot_be_renamed_is_written_file_by_file(tmp_path, monkeypatch):
    """The working directory (and a mount point, a parent not writable): the swap is not
    possible there (a mount point answered EBUSY), so its files are replaced, manifest last;
    a linked bundle folder is written where the link points, the link kept."""
    out = tmp_path / "b"
    _bundle(out, 1, "old")
    (out / "notes.txt").write_text("mine")
    monkeypatch.chdir(out)
    second = _bundle(Path("."), 2, "in place")
    assert Bundle.load(out).model_sha256 == second["model_sha256"]
    assert (out / "notes.txt").read_text() == "mine" and Path.cwd() == out
    assert _hidden(out) == [] and _hidden(tmp_path) == []
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "current"
    link.symlink_to(out)
    third = _bundle(link, 3, "through the link")
    assert link.is_symlink() and Bundle.load(out).model_sha256 == third["model_sha256"]
    assert _hidden(tmp_path) == []


def test_what_a_killed_writer_in_place_left_is_not_carried_into_the_next_bundle(tmp_path):
    """A stage left inside the folder by a writer killed while writing in place was linked
    into the next bundle as if it were the user's file."""
    out = tmp_path / "b"
    _bundle(out, 1, "old")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    left = out / f".stage.writing-{staging._host()}-{dead}-0a1b2c3d"
    left.mkdir()
    (left / "model.onnx").write_bytes(b"half")
    _bundle(out, 2, "new")
    assert _hidden(out) == [] and _hidden(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_writer_killed_mid_bundle_leaves_the_old_bundle_working(tmp_path, exchange):
    """SIGKILL after model.onnx of the new bundle was written and before its manifest: the
    old bundle still loads and encodes as before; the next write cleans up and succeeds."""
    out = tmp_path / "b"
    old = _bundle(out, 1, "old")
    before = _codes(out)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        from onnx_models import manifest_for, random_projection_model
        from rsir_sdk import bundle_writer, staging

        def killed(*a, **kw):   # the model is written; the split and manifest are not
            os.kill(os.getpid(), signal.SIGKILL)

        bundle_writer.save_split = killed
        if not {exchange!r}:
            staging._exchange = lambda a, b: False
        from rsir_sdk.splits import Split
        split = Split("80-20", 0, ["a", "b"], ["c"])
        bundle_writer.write_bundle({str(out)!r}, random_projection_model(32, 32, 32, seed=2)[0],
                                   manifest_for(32, 32, 32), split=split)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert _hidden(tmp_path), "the killed writer's stage is expected beside the bundle"
    assert Bundle.load(out).model_sha256 == old["model_sha256"]
    assert np.array_equal(_codes(out), before)
    new = _bundle(out, 3, "after")
    assert Bundle.load(out).model_sha256 == new["model_sha256"]
    assert _hidden(tmp_path) == []


def test_an_old_bundle_moved_aside_by_a_killed_swap_is_put_back(tmp_path):
    """Without renameat2 the swap is two renames: a kill between them leaves no bundle and
    the old one under a hidden name; the next write (or its recovery) puts it back."""
    out = tmp_path / "b"
    old = _bundle(out, 1, "old")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    os.rename(out, tmp_path / f".b.old-{staging._host()}-{dead}-0a1b2c3d")
    staging.recover(out)
    assert Bundle.load(out).model_sha256 == old["model_sha256"]
    assert _hidden(tmp_path) == []


def test_files_are_replaced_in_one_step(tmp_path, monkeypatch):
    report = tmp_path / "dups.csv"
    report.write_text("old complete report\n")

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        staging.replace_text(report, "new report\n" * 1000)
    assert report.read_text() == "old complete report\n"          # not emptied
    assert _hidden(tmp_path) == []                                # its temp file removed
    monkeypatch.undo()
    staging.replace_text(report, "new report\n")
    assert report.read_text() == "new report\n"
    link = tmp_path / "latest.csv"
    link.symlink_to(report)
    staging.replace_text(link, "through the link\n")
    assert link.is_symlink() and report.read_text() == "through the link\n"


def test_update_manifest_keeps_the_old_manifest_when_interrupted(tmp_path, monkeypatch):
    out = tmp_path / "b"
    _bundle(out, 1, "old")
    before = (out / "manifest.json").read_text()

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        update_manifest(out, training={"metrics": {"map": 0.9}})
    assert (out / "manifest.json").read_text() == before
    monkeypatch.undo()
    update_manifest(out, training={"metrics": {"map": 0.9}})
    assert json.loads((out / "manifest.json").read_text())["training"]["metrics"] == {"map": 0.9}
    assert Bundle.load(out).manifest["training"]["note"] == "old"
