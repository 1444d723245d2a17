"""Train / query splits of an archive, and the ``split.json`` file that records them.

Why here: training draws a split and writes it into the bundle; evaluation, quantization
calibration and the quickstart read it back. One format, one reader, one writer, so every
reported number can be reproduced from the split file.

A split is stratified (per class, ``round(frac * n)`` images to *train*, the rest to *query*),
deterministic for a given archive, protocol and seed (``numpy.random.default_rng(seed)``,
classes in sorted order), and stored as item ids (:mod:`rsir_sdk.archive`'s id rule).

>>> split = make_split(open_archive("nwpu12/", label_from="top"), "80-20", seed=0)  # doctest: +SKIP
>>> save_split(split, "bundle/split.json")                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import staging
from .archive import ArchiveListing
from .errors import SplitError

log = logging.getLogger(__name__)

#: the file name of a split inside a bundle
SPLIT_FILE = "split.json"
#: protocol name -> fraction of each class that goes to the train (= database) side
PROTOCOLS = {"80-20": 0.8, "60-40": 0.6, "50-50": 0.5}
SPLIT_FORMAT_VERSION = 1


@dataclass
class Split:
    """A train (= retrieval database) / query split, stored as item ids."""

    protocol: str
    seed: int
    train_ids: list[str]
    query_ids: list[str]
    archive_fingerprint: str = ""
    dataset: str = ""

    def indices(self, archive: ArchiveListing) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the train and query items in ``archive`` (split order kept)."""
        pos = {it.id: i for i, it in enumerate(archive.items)}
        missing = [i for i in self.train_ids + self.query_ids if i not in pos]
        if missing:
            raise SplitError(
                f"{len(missing)} id(s) of the split are not in the archive {archive.root} "
                f"(e.g. {missing[:3]}): the split belongs to another archive; give the archive "
                f"it was drawn from, or draw a new split"
            )
        return (
            np.array([pos[i] for i in self.train_ids], dtype=np.int64),
            np.array([pos[i] for i in self.query_ids], dtype=np.int64),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object written by :func:`save_split`."""
        return {
            "format_version": SPLIT_FORMAT_VERSION,
            "protocol": self.protocol,
            "seed": self.seed,
            "dataset": self.dataset,
            "archive_fingerprint": self.archive_fingerprint,
            "train": self.train_ids,
            "query": self.query_ids,
        }


def make_split(archive: ArchiveListing, protocol: str = "80-20", seed: int = 0) -> Split:
    """Draw a stratified split: per class, ``round(frac * n)`` images to train, the rest query.

    Every class needs at least 2 images so both sides get one.
    """
    if protocol not in PROTOCOLS:
        raise SplitError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    frac = PROTOCOLS[protocol]
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    for it in archive.items:
        by_class.setdefault(it.label, []).append(it.id)
    small = {c: len(v) for c, v in by_class.items() if len(v) < 2}
    if small:
        raise SplitError(
            f"class(es) with fewer than 2 images cannot be split into train and query: {small}; "
            f"add images or remove the class"
        )
    train: list[str] = []
    query: list[str] = []
    for c in sorted(by_class):
        ids = by_class[c]
        perm = rng.permutation(len(ids))
        n_train = min(max(1, int(round(frac * len(ids)))), len(ids) - 1)
        train += [ids[i] for i in sorted(perm[:n_train])]
        query += [ids[i] for i in sorted(perm[n_train:])]
    return Split(protocol, seed, train, query, archive.fingerprint(), archive.name)


def save_split(split: Split, path: str | os.PathLike) -> Path:
    """Write ``split`` as JSON to ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging.replace_text(path, json.dumps(split.to_json(), indent=1))
    return path


def load_split(path: str | os.PathLike, archive: ArchiveListing | None = None) -> Split:
    """Read a split file (a bundle folder means its ``split.json``); with ``archive``, check
    that every id is in it."""
    path = Path(path)
    if path.is_dir():
        path = path / SPLIT_FILE
    if not path.is_file():
        raise SplitError(
            f"no split file at {path}: evaluation and calibration need the split the bundle "
            f"was trained on (training writes it into the bundle)"
        )
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        split = Split(
            protocol=str(obj["protocol"]),
            seed=int(obj.get("seed", 0)),
            train_ids=[str(x) for x in obj["train"]],
            query_ids=[str(x) for x in obj["query"]],
            archive_fingerprint=str(obj.get("archive_fingerprint", "")),
            dataset=str(obj.get("dataset", "")),
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            ValueError, AttributeError) as exc:
        raise SplitError(f"cannot read split file {path}: {exc}") from None
    if archive is not None:
        split.indices(archive)
    return split


def split_for(
    archive: ArchiveListing, split_file: str | os.PathLike | None, protocol: str, seed: int
) -> Split:
    """Load ``split_file`` when it exists, else draw a split (and save it there when given)."""
    if split_file is not None and Path(split_file).is_file():
        split = load_split(split_file, archive)
        log.info("using split %s (%s, seed %d)", split_file, split.protocol, split.seed)
        _warn_uncovered(archive, split, split_file)
        return split
    split = make_split(archive, protocol, seed)
    if split_file is not None:
        save_split(split, split_file)
    return split


def _warn_uncovered(archive: ArchiveListing, split: Split, split_file: str | os.PathLike) -> None:
    """Say when the archive holds images the split file does not list (images or whole
    classes added since it was drawn): they are neither trained on nor queried, and training
    went on with the old split and no word."""
    listed = set(split.train_ids) | set(split.query_ids)
    new = [it for it in archive.items if it.id not in listed]
    if not new:
        return
    covered = {it.label for it in archive.items if it.id in listed}
    unseen = sorted({it.label for it in new} - covered)
    classes = (f"; whole classes not in it: {', '.join(unseen[:5])}"
               f"{' ...' if len(unseen) > 5 else ''}" if unseen else "")
    log.warning("split file %s lists %d of the archive's %d images: %d images (added since it "
                "was drawn?) are left out of training and queries%s; delete it or give another "
                "--split-file to draw a split of the whole archive", split_file, len(listed),
                len(archive.items), len(new), classes)
