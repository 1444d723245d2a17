"""Archive readers, splits and bad-input errors of export/data.py (torch-free)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.data import (
    ArchiveNotFoundError,
    CorruptImageError,
    EmptyClassError,
    ManifestError,
    SplitError,
    check_images,
    load_split,
    make_split,
    open_archive,
    read_csv,
    read_folder,
    save_split,
    split_for,
)

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "data" / "eurosat-sample"


def _img(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _archive(tmp_path: Path, per_class: dict[str, int]) -> Path:
    root = tmp_path / "arch"
    for c, n in per_class.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _img(root / c / f"{c}_{i}.png", i * 10)
    return root


def test_folder_reader_on_sample():
    arch = read_folder(SAMPLE)
    assert len(arch) == 200
    assert len(arch.classes) == 10
    assert arch.samples[0].path == "AnnualCrop/AnnualCrop_1008.jpg"  # README.md at the top is ignored
    assert np.bincount(arch.labels()).tolist() == [20] * 10


@pytest.mark.parametrize("protocol,n_train", [("80-20", 16), ("60-40", 12), ("50-50", 10)])
def test_split_is_stratified_and_deterministic(protocol, n_train):
    arch = read_folder(SAMPLE)
    a, b = make_split(arch, protocol, seed=3), make_split(arch, protocol, seed=3)
    assert a.train_ids == b.train_ids and a.query_ids == b.query_ids
    assert make_split(arch, protocol, seed=4).train_ids != a.train_ids
    tr, q = a.indices(arch)
    assert not set(tr) & set(q) and len(tr) + len(q) == 200
    labels = arch.labels()
    assert np.bincount(labels[tr]).tolist() == [n_train] * 10


def test_split_file_roundtrip(tmp_path):
    arch = read_folder(SAMPLE)
    split = make_split(arch, "80-20", seed=0)
    path = save_split(split, tmp_path / "s" / "split.json")
    again = load_split(path, arch)
    assert again.train_ids == split.train_ids and again.query_ids == split.query_ids
    assert json.loads(path.read_text())["protocol"] == "80-20"
    # split_for reads an existing file instead of drawing a new split with another seed
    assert split_for(arch, path, "80-20", seed=99).train_ids == split.train_ids


def test_split_of_another_archive_is_refused(tmp_path):
    arch = read_folder(SAMPLE)
    split = make_split(read_folder(_archive(tmp_path, {"a": 3, "b": 3})), "80-20", 0)
    with pytest.raises(SplitError, match="another archive"):
        split.indices(arch)


def test_csv_manifest_with_metadata(tmp_path):
    arch = read_folder(SAMPLE)
    lines = ["path,label,sensor"] + [f"{s.path},{s.label},S2" for s in arch.samples[:40]]
    (tmp_path / "m.csv").write_text("\n".join(lines))
    got = read_csv(tmp_path / "m.csv", root=SAMPLE)
    assert len(got) == 40 and got.samples[0].metadata == {"sensor": "S2"}
    assert open_archive(tmp_path / "m.csv", root=SAMPLE).classes == got.classes


def test_csv_without_label_column(tmp_path):
    (tmp_path / "m.csv").write_text("path,sensor\na.jpg,S2\n")
    with pytest.raises(ManifestError, match="no 'label' column"):
        read_csv(tmp_path / "m.csv")


def test_csv_with_missing_file(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\nnothere.jpg,x\n")
    with pytest.raises(ArchiveNotFoundError, match="do not exist"):
        read_csv(tmp_path / "m.csv")


def test_empty_class_folder(tmp_path):
    root = _archive(tmp_path, {"a": 3, "b": 3})
    (root / "empty").mkdir()
    with pytest.raises(EmptyClassError, match="empty"):
        read_folder(root)
    arch = read_folder(root, allow_empty_classes=True)
    assert arch.classes == ["a", "b"] and arch.skipped == [("empty/", "empty class folder")]


def test_single_image_class_cannot_be_split(tmp_path):
    arch = read_folder(_archive(tmp_path, {"a": 5, "lonely": 1}))
    with pytest.raises(SplitError, match="fewer than 2 images.*lonely"):
        make_split(arch)


def test_corrupt_image_is_named_or_skipped(tmp_path):
    root = _archive(tmp_path, {"a": 3, "b": 3})
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    arch = read_folder(root)
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        check_images(arch)
    kept = check_images(arch, skip_corrupt=True)
    assert len(kept) == 6 and [p for p, _ in kept.skipped] == ["a/broken.jpg"]


def test_missing_archive(tmp_path):
    with pytest.raises(ArchiveNotFoundError):
        read_folder(tmp_path / "nope")
    shutil.rmtree(tmp_path, ignore_errors=True)
