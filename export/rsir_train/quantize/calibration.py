"""Which images calibrate a quantized encoder, and which disjoint ones check it.

Why through the runtime's lister and split reader: the calibration source is listed by
:func:`rsir_sdk.archive.open_archive` (the one extension list) and the bundle's split read by
:meth:`rsir_sdk.Bundle.split`, so "the train part of the split" means the same images here as
in training and evaluation. When the bundle has a split of this archive, calibration images come
from its train part (the retrieval database) and check images from its query part, so the images
used to evaluate retrieval never calibrate the model.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from rsir_sdk.archive import ArchiveListing, Item, open_archive
from rsir_sdk.bundle import Bundle
from rsir_sdk.errors import ArchiveError, ImageLoadError, SplitError
from rsir_sdk.images import load_image
from rsir_sdk.preprocess import prepare
from rsir_sdk.splits import Split

from ..errors import QuantizeError

__all__ = ["READERS", "CalibrationReader", "CalibrationSet", "calibration_set", "prepared_batches"]

#: how calibration images are chosen (see :func:`calibration_set`)
READERS = ("auto", "folder", "csv", "split")
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class CalibrationSet:
    """Images chosen to calibrate a quantized encoder, and disjoint ones to check it.

    ``paths`` and ``check_paths`` are relative to ``root`` (POSIX separators).
    """

    root: Path
    reader: str
    paths: list[str]
    check_paths: list[str]
    seed: int
    note: str = ""

    def fingerprint(self) -> str:
        """sha256 over the calibration file list: says which images calibrated the model."""
        h = hashlib.sha256()
        for p in self.paths:
            h.update(p.encode("utf-8") + b"\n")
        return h.hexdigest()


def _stratified(items: Sequence[Item], seed: int) -> list[str]:
    """Shuffle per class (label, else top-level folder) and interleave, so any prefix covers
    every class. Paths in that order."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for it in sorted(items, key=lambda it: it.path):
        group = it.label or (it.path.split("/")[0] if "/" in it.path else "")
        groups.setdefault(group, []).append(it.path)
    shuffled = [[g[i] for i in rng.permutation(len(g))] for _, g in sorted(groups.items())]
    out: list[str] = []
    for i in range(max((len(g) for g in shuffled), default=0)):
        out += [g[i] for g in shuffled if i < len(g)]
    return out


def _bundle_split(bundle: Bundle | None) -> Split | None:
    if bundle is None:
        return None
    if not (bundle.path / "split.json").is_file():
        return None
    try:
        return bundle.split()
    except SplitError as exc:
        raise QuantizeError(str(exc)) from None


def _covers(listing: ArchiveListing, split: Split | None) -> bool:
    if split is None or not split.train_ids:
        return False
    try:
        split.indices(listing)
    except SplitError:
        return False
    return True


def calibration_set(
    source: str | os.PathLike,
    bundle: Bundle | None = None,
    *,
    reader: str = "auto",
    count: int = 256,
    check: int = 256,
    seed: int = 0,
) -> CalibrationSet:
    """Choose ``count`` calibration images and up to ``check`` disjoint ones to measure agreement.

    Readers:

    - ``folder``: every image under the folder ``source``, drawn stratified by top-level
      sub-folder (class) with ``seed``;
    - ``csv``: the images of the CSV manifest ``source`` (its ``path`` column, relative to its
      folder), stratified by its ``label`` column when it has one;
    - ``split``: the bundle's ``split.json`` over the archive ``source``: calibration images from
      its *train* part, check images from its *query* part;
    - ``auto``: ``split`` when the bundle has a split whose images are all in ``source``, else
      ``csv`` for a ``.csv`` file and ``folder`` otherwise.
    """
    src = Path(source)
    if reader not in READERS:
        raise QuantizeError(f"unknown calibration reader {reader!r}; choose one of {READERS}")
    if not src.exists():
        raise QuantizeError(f"calibration source {src} does not exist")
    if count < 1:
        raise QuantizeError(f"calibration count must be >= 1, got {count}")
    try:
        listing = open_archive(src, label_from="top")
    except ArchiveError as exc:
        raise QuantizeError(f"calibration source: {exc}") from None
    split = _bundle_split(bundle)
    if reader == "auto":
        reader = "split" if _covers(listing, split) else listing.kind
    if reader in ("folder", "csv") and listing.kind != reader:
        raise QuantizeError(f"reader '{reader}' needs a "
                            f"{'folder of images' if reader == 'folder' else 'CSV file'}, got {src}")
    note = ""
    if reader == "split":
        if split is None:
            raise QuantizeError(
                f"reader 'split' needs the bundle's split.json, which "
                f"{bundle.path if bundle else 'the bundle'} does not have: use --reader folder"
            )
        if not _covers(listing, split):
            raise QuantizeError(
                f"the bundle's split names images that are not in {src}: give the archive the "
                f"bundle was trained on"
            )
        by_id = listing.by_id()
        paths = _stratified([by_id[i] for i in split.train_ids], seed)[:count]
        check_paths = _stratified([by_id[i] for i in split.query_ids], seed)[:check]
        note = "calibration from the split's train part, check images from its query part"
    else:
        order = _stratified(listing.items, seed)
        paths, check_paths = order[:count], order[count : count + check]
    if not paths:
        raise QuantizeError(f"no calibration images found in {src} (reader {reader})")
    return CalibrationSet(listing.root, reader, paths, check_paths, seed, note)


def check_readable(calib: CalibrationSet) -> None:
    """Every calibration and check image decodes, or one QuantizeError naming them all (up
    to five, and how many): found mid-calibration, the first one stopped the run, blamed on
    onnxruntime, and the next run stopped at the next one."""
    bad = []
    for p in [*calib.paths, *calib.check_paths]:
        try:
            load_image(calib.root / p)
        except ImageLoadError as exc:
            bad.append(f"{p} ({exc.reason})")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise QuantizeError(f"{len(bad)} calibration image(s) in {calib.root} cannot be read: "
                            f"{shown}. Remove them, or give another --calibration folder")


def prepared_batches(
    root: Path, paths: Sequence[str], preprocess: dict[str, Any], batch_size: int
) -> Iterator[np.ndarray]:
    """``uint8 (n, h, w, 3)`` batches of the images, decoded and cropped as the bundle says."""
    for start in range(0, len(paths), batch_size):
        batch = []
        for p in paths[start : start + batch_size]:
            try:
                batch.append(prepare(load_image(root / p), preprocess))
            except ImageLoadError as exc:
                raise QuantizeError(f"calibration image {p} cannot be read: {exc.reason}") from None
        yield np.stack(batch)


class CalibrationReader:
    """onnxruntime CalibrationDataReader over prepared uint8 batches (supports strided ranges)."""

    def __init__(self, root: Path, paths: Sequence[str], bundle: Bundle, batch_size: int,
                 progress: Progress | None):
        self.root, self.paths, self.bundle = root, list(paths), bundle
        self.batch_size = batch_size
        self.n_batches = -(-len(self.paths) // batch_size)
        self.progress = progress
        self.set_range(0, self.n_batches)

    def __len__(self) -> int:
        return self.n_batches

    def set_range(self, start_index: int, end_index: int) -> None:
        """Restrict the batches served next (onnxruntime's strided calibration calls this)."""
        self._next, self._end = start_index, min(end_index, self.n_batches)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while (item := self.get_next()) is not None:
            yield item

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch as onnxruntime's feed dict, ``None`` when the range is done."""
        if self._next >= self._end:
            return None
        i = self._next
        self._next += 1
        sub = self.paths[i * self.batch_size : (i + 1) * self.batch_size]
        batch = next(prepared_batches(self.root, sub, self.bundle.preprocess, len(sub)))
        if self.progress:
            self.progress({"event": "calibrate", "batch": i + 1, "batches": self.n_batches})
        return {self.bundle.input_name: batch}
