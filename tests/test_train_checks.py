"""`rsir train`'s outputs, device and counts checked before any work (rsir_train.train_checks):
each problem is one line and exit status 1 (2 for a bad count), nothing is written, and
nothing is left inside the archive. Real archives of real pixels, the real command line."""

from __future__ import annotations

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from rsir_sdk.cli import main  # noqa: E402  (the `rsir` command, which forwards train)

TINY = ["--bits", "8", "--backbone", "small_cnn", "--no-pretrained", "--outer", "1", "--inner",
        "1", "--no-cache", "--device", "cpu", "-q"]


def _archive(root, classes=("a", "b")):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 30 * i + 5, np.uint8)).save(root / c / f"{i}.png")
    return root


def _train(capsys, *argv):
    code = main(["train", "ahcl", *map(str, argv)])
    return code, capsys.readouterr().err


def test_unusable_outputs_are_one_line_before_training(tmp_path, capsys):
    root = _archive(tmp_path / "arch")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for extra, said in (
            (["--out", a_file], f"--out {a_file} is a file: give a folder"),
            (["--out", tmp_path / "o", "--work-dir", a_file], f"--work-dir {a_file} is a file"),
            (["--out", root / "a" / "bundle"], "lies inside the archive"),
            (["--out", "/proc/rsir-nope"], "--out /proc/rsir-nope cannot be written")):
        code, err = _train(capsys, "--data", root, *TINY, *extra)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and said in lines[0], err
        assert lines[0].startswith("rsir train ahcl: ") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written anywhere


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a CPU-only torch")
def test_cuda_on_a_cpu_torch_is_one_line(tmp_path, capsys):
    root = _archive(tmp_path / "arch")
    code, err = _train(capsys, "--data", root, "--out", tmp_path / "o", *TINY, "--device", "cuda")
    assert code == 1 and err.strip() == (
        "rsir train ahcl: --device cuda: torch sees no CUDA device (a CPU build of torch, or "
        "no GPU visible); use --device cpu or leave --device out")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--batch-size", "--epochs", "--outer", "--threads"])
def test_a_count_of_zero_is_a_usage_error(tmp_path, capsys, flag):
    # --batch-size 0 was a ZeroDivisionError; --epochs 0 silently the default schedule
    root = _archive(tmp_path / "arch")
    code, err = _train(capsys, "--data", root, "--out", tmp_path / "o", *TINY, flag, "0")
    assert code == 2 and f"argument {flag}: must be at least 1, got 0" in err


def test_one_class_is_refused_before_features_are_computed(tmp_path, capsys):
    # it trained and reported mAP 1.0 and query accuracy 1.0
    root = _archive(tmp_path / "arch", classes=("beach",))
    code, err = _train(capsys, "--data", root, "--out", tmp_path / "o", *TINY)
    assert code == 1 and "AHCL learns its codes from classes, and the archive holds one " \
        "('beach')" in err and "rsir train itq" in err
    assert not (tmp_path / "o").exists()


def test_resume_with_nothing_to_resume_says_so(tmp_path, capsys, caplog):
    root = _archive(tmp_path / "arch")
    with caplog.at_level(logging.INFO, logger="rsir_train"):
        code, err = _train(capsys, "--data", root, "--out", tmp_path / "o", *TINY, "--resume")
    assert code == 0, err
    assert f"no checkpoint at {tmp_path / 'o.work' / 'checkpoint.pt'}: training starts from " \
        "the beginning" in caplog.text


def test_an_earlier_bundle_is_replaced_only_when_asked(tmp_path, capsys):
    # it was replaced without a word (a collection filled with it needs its encoder), where
    # rsir quantize refused; --overwrite replaces it, --resume finishes or re-exports the run
    root = _archive(tmp_path / "arch")
    out = tmp_path / "o"
    code, err = _train(capsys, "--data", root, "--out", out, *TINY)
    assert code == 0, err
    first = (out / "manifest.json").read_bytes()
    code, err = _train(capsys, "--data", root, "--out", out, *TINY, "--seed", "1")
    assert code == 1 and err.strip() == (
        f"rsir train ahcl: --out {out} already holds a bundle: choose another --out, or replace "
        f"it with --overwrite, or --resume to finish or export that run again")
    assert (out / "manifest.json").read_bytes() == first
    code, err = _train(capsys, "--data", root, "--out", out, *TINY, "--seed", "1", "--overwrite")
    assert code == 0, err
    assert (out / "manifest.json").read_bytes() != first
    code, err = _train(capsys, "--data", root, "--out", out, *TINY, "--seed", "1", "--resume")
    assert code == 0, err


def test_an_unknown_flag_is_named_by_the_command(tmp_path, capsys):
    code, err = _train(capsys, "--data", tmp_path, "--out", tmp_path / "o", "--bogus", "1")
    assert code == 2 and err.strip() == ("rsir train ahcl: unrecognized arguments: --bogus 1 "
                                         "(see rsir train ahcl --help)")
