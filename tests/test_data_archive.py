"""The training archive (rsir_train.dataset over rsir_sdk.archive), splits (rsir_sdk.splits) and
bad-input errors (torch-free)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsir_sdk.errors import ArchiveError, RsirError
from rsir_sdk.splits import SplitError, load_split, make_split, save_split, split_for
from rsir_train.dataset import check_images, open_training_archive, skipped
from rsir_train.errors import CorruptImageError, DataError, EmptyClassError, MissingLabelError
from rsir_train.sample import sample_archive

SAMPLE = sample_archive()
read_folder = open_training_archive


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
    assert arch.items[0].path == "AnnualCrop/AnnualCrop_1008.jpg"  # README.md at the top is ignored
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


def test_a_split_file_that_misses_images_added_since_is_said_to(tmp_path, caplog):
    """Images (and a whole class) added to the archive after its split file was drawn were
    left out of training and queries without a word; now one warning counts and names them."""
    root = _archive(tmp_path, {"a": 5, "b": 5})
    path = tmp_path / "split.json"
    split = split_for(read_folder(root), path, "80-20", seed=0)
    with caplog.at_level("WARNING", logger="rsir_sdk.splits"):
        split_for(read_folder(root), path, "80-20", seed=0)
    assert not caplog.records
    _img(root / "a" / "a_new.png", 200)
    for i in range(4):
        _img(root / "island" / f"island_{i}.png", 100 + i)
    with caplog.at_level("WARNING", logger="rsir_sdk.splits"):
        again = split_for(read_folder(root), path, "80-20", seed=0)
    assert again.train_ids == split.train_ids          # the file still rules ...
    text = caplog.text                                 # ... and the gap is said
    assert "lists 10 of the archive's 15 images: 5 images" in text
    assert "whole classes not in it: island" in text and "delete it" in text


def test_csv_manifest_with_metadata(tmp_path):
    arch = read_folder(SAMPLE)
    lines = ["path,label,sensor"] + [f"{s.path},{s.label},S2" for s in arch.items[:40]]
    (tmp_path / "m.csv").write_text("\n".join(lines))
    got = open_training_archive(tmp_path / "m.csv", root=SAMPLE)
    assert len(got) == 40 and got.items[0].metadata == {"sensor": "S2"}
    assert got.classes == ["AnnualCrop", "Forest"]
    # the same ids as the folder listing: a split drawn on one applies to the other
    assert [it.id for it in got.items] == [it.id for it in arch.items[:40]]


def test_csv_without_label_column(tmp_path):
    (tmp_path / "m.csv").write_text("path,sensor\na.jpg,S2\n")
    with pytest.raises(ArchiveError, match="no 'label' column"):
        open_training_archive(tmp_path / "m.csv")


def test_csv_with_missing_file_or_label_or_duplicate(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\nnothere.jpg,x\n")
    with pytest.raises(DataError, match="do not exist"):
        open_training_archive(tmp_path / "m.csv")
    _img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,\n")
    with pytest.raises(MissingLabelError, match="empty 'label' cell"):
        open_training_archive(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("path,label\na.png,x\na.png,y\n")
    with pytest.raises(DataError, match="duplicate id"):
        open_training_archive(tmp_path / "m.csv")


def test_images_outside_class_folders_are_refused(tmp_path):
    root = _archive(tmp_path, {"a": 2, "b": 2})
    _img(root / "stray.png")
    with pytest.raises(MissingLabelError, match="stray.png"):
        open_training_archive(root)


def test_empty_class_folder(tmp_path):
    root = _archive(tmp_path, {"a": 3, "b": 3})
    (root / "empty").mkdir()
    with pytest.raises(EmptyClassError, match="empty"):
        read_folder(root)
    arch = read_folder(root, allow_empty_classes=True)
    assert arch.classes == ["a", "b"] and skipped(arch) == [["empty/", "empty class folder"]]


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
    assert len(kept) == 6 and [p for p, _ in skipped(kept)] == ["a/broken.jpg"]


def test_a_class_whose_every_image_is_unreadable_is_refused_not_dropped(tmp_path):
    """--skip-corrupt skipped the class's images one warning each and trained without the
    class; it is refused as an empty class folder is."""
    root = _archive(tmp_path, {"a": 4, "d": 3})
    (root / "b").mkdir()
    (root / "b" / "bad.jpg").write_bytes(b"")
    (root / "a" / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(EmptyClassError, match=r"class b has no readable image"):
        check_images(read_folder(root), skip_corrupt=True)
    (root / "b" / "bad.jpg").unlink()
    _img(root / "b" / "ok.png")
    assert "a/bad.jpg" in str(skipped(check_images(read_folder(root), skip_corrupt=True)))


def test_missing_archive(tmp_path):
    with pytest.raises(ArchiveError, match="does not exist"):
        read_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        read_folder(tmp_path / "flat")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_every_training_error_is_an_rsir_error():
    for cls in (DataError, EmptyClassError, MissingLabelError, CorruptImageError, SplitError):
        assert issubclass(cls, RsirError)
