"""Faults of a bundle are reported as faults of the bundle: one line naming the file and the
field, before any collection is created; damaged or changed learned codes are refused.
Real bundles (random-projection ONNX models written by ``write_bundle``), tampered in tmp_path."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from onnx_models import build_random_projection_bundle

from rsir_sdk import Bundle, Encoder, Retriever
from rsir_sdk.bundle import INTERPOLATIONS
from rsir_sdk.cli import main
from rsir_sdk.errors import BundleError
from rsir_sdk.preprocess import _INTERPOLATION

N = 12


@pytest.fixture(scope="module")
def learned_bundle(tmp_path_factory) -> Path:
    """A 32-bit bundle with N learned database codes, written by write_bundle."""
    out = tmp_path_factory.mktemp("faults") / "learned"
    codes = np.random.default_rng(3).integers(0, 256, (N, 4), dtype=np.uint8)
    build_random_projection_bundle(out, bits=32, size=32, database={
        "codes": codes, "ids": [f"img{i}" for i in range(N)], "labels": ["a", "b"] * (N // 2),
        "paths": [f"a/{i}.jpg" for i in range(N)], "kind": "learned"})
    return out


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def edit(d: Path, fn) -> None:
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_loader_knows_every_resampling_filter_prepare_uses():
    assert set(INTERPOLATIONS) == set(_INTERPOLATION)


@pytest.mark.parametrize("field, value", [
    ("interpolation", "foo"), ("interpolation", 3), ("resize", "abc"), ("resize", 0),
    ("resize", 2.5), ("crop", "x"), ("crop", [32, "32"]), ("scale", "s"), ("mean", [1, 2]),
])
def test_a_bad_preprocess_field_is_one_line_naming_file_and_field(learned_bundle, tmp_path,
                                                                   field, value):
    d = copy_of(learned_bundle, tmp_path)
    edit(d, lambda m: m["preprocess"].update({field: value}))
    with pytest.raises(BundleError) as err:
        Bundle.load(d)
    msg = str(err.value)
    assert f"{d / 'manifest.json'}" in msg and f"preprocess.{field}" in msg, msg
    assert "\n" not in msg


def test_rsir_index_with_a_bad_interpolation_blames_the_bundle_and_creates_nothing(
        learned_bundle, tmp_path, sample_images, capsys):
    d = copy_of(learned_bundle, tmp_path)
    edit(d, lambda m: m["preprocess"].update(interpolation="foo"))
    archive = tmp_path / "archive"
    for p, label in sample_images[:4]:
        (archive / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, archive / label / p.name)
    db = tmp_path / "out.db"
    code, out, err = cli(capsys, "index", d, archive, "--uri", db, "--collection", "c")
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "preprocess.interpolation" in lines[0] and "manifest.json" in lines[0]
    assert "foo" in lines[0] and "cannot load image" not in err
    assert not db.exists()   # no collection (not even a Lite file) was created


def test_an_edited_resampling_filter_is_refused_by_the_encoder(learned_bundle, tmp_path):
    """A valid but changed preprocess field: the model (the encoder's identity) records the one
    it was written with, so the edited manifest is refused instead of giving other codes."""
    d = copy_of(learned_bundle, tmp_path)
    edit(d, lambda m: m["preprocess"].update(interpolation="nearest"))
    Bundle.load(d)   # a valid manifest on its own
    with pytest.raises(BundleError, match=r"'preprocess.interpolation' is \"nearest\" but "
                                          r"model.onnx was written with \"bilinear\""):
        Encoder(d)


def test_a_garbled_database_is_named(learned_bundle, tmp_path, capsys):
    d = copy_of(learned_bundle, tmp_path)
    npz = d / "database.npz"
    npz.write_bytes(b"PK\x03\x04 this is not a zip archive" * 20)
    with pytest.raises(BundleError, match="does not match manifest.json's database.sha256") as err:
        Bundle.load(d).load_database()
    assert str(npz) in str(err.value)
    edit(d, lambda m: m["database"].pop("sha256"))    # as a bundle written before the hash
    with pytest.raises(BundleError, match=r"cannot be read \(BadZipFile") as err:
        Bundle.load(d).load_database()
    assert str(npz) in str(err.value) and "\n" not in str(err.value)
    code, out, err = cli(capsys, "info", d)
    assert code == 1 and f"{N} learned codes" not in out
    assert "database     unreadable:" in out and "database.npz" in err
    code, out, _ = cli(capsys, "info", d, "--json")
    assert code == 1 and "BadZipFile" in json.loads(out)["database"]["error"]


def test_a_changed_learned_code_is_refused(learned_bundle, tmp_path, capsys):
    d = copy_of(learned_bundle, tmp_path)
    with np.load(d / "database.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["codes"][5, 2] ^= 0b00010000   # one flipped bit, in a valid file
    np.savez(d / "database.npz", **arrays)
    with pytest.raises(BundleError, match="the learned codes changed") as err:
        Bundle.load(d).load_database()
    assert "\n" not in str(err.value)
    db = tmp_path / "l.db"
    code, out, err = cli(capsys, "index", d, "--learned", "--uri", db, "--collection", "l")
    assert code == 1 and "the learned codes changed" in err and len(err.strip().splitlines()) == 1
    with Retriever(d, uri=str(tmp_path / "r.db"), collection="r") as r:
        with pytest.raises(BundleError, match="database.sha256"):
            r.add_learned_codes()
        assert r.count() == 0
    code, _, _ = cli(capsys, "info", d)
    assert code == 1


def test_the_hash_is_written_and_checked_and_old_bundles_still_load(learned_bundle, tmp_path,
                                                                    caplog):
    m = json.loads((learned_bundle / "manifest.json").read_text())
    assert len(m["database"]["sha256"]) == 64
    assert len(Bundle.load(learned_bundle).load_database()) == N
    d = copy_of(learned_bundle, tmp_path)
    edit(d, lambda m: m["database"].pop("sha256"))
    with caplog.at_level(logging.WARNING, logger="rsir_sdk.bundle"):
        db = Bundle.load(d).load_database()
    assert len(db) == N
    assert "records no database.sha256" in caplog.text and "without an integrity check" in caplog.text
