"""Labelled image archives (a folder per class, or a CSV manifest) and reproducible splits.

An :class:`Archive` is a list of :class:`Sample` (relative path, label, id, metadata) under a
root folder. :func:`make_split` draws a deterministic stratified split (AHCL protocol 80/20 per
class; 50/50 and 60/40 too) and :func:`save_split` / :func:`load_split` write and read it as
JSON, so every reported number can be reproduced from the split file. Torch-free.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
#: protocol name -> fraction of each class that goes to the train (= database) side
PROTOCOLS = {"80-20": 0.8, "60-40": 0.6, "50-50": 0.5}
SPLIT_FORMAT_VERSION = 1


class DataError(ValueError):
    """Base class of every problem with a training archive or split."""


class ArchiveNotFoundError(DataError):
    """The archive folder or manifest does not exist."""


class EmptyClassError(DataError):
    """A class folder holds no images."""


class ManifestError(DataError):
    """A CSV manifest lacks a required column or holds a bad row."""


class CorruptImageError(DataError):
    """One or more images of the archive cannot be decoded."""

    def __init__(self, bad: Sequence[tuple[str, str]]):
        self.bad = list(bad)
        lines = "; ".join(f"{p}: {why}" for p, why in self.bad[:5])
        more = f" (and {len(self.bad) - 5} more)" if len(self.bad) > 5 else ""
        super().__init__(
            f"{len(self.bad)} image(s) cannot be decoded: {lines}{more}. Remove or replace "
            f"them, or pass skip_corrupt=True (--skip-corrupt) to leave them out (reported)."
        )


class SplitError(DataError):
    """A split cannot be drawn (too few images in a class) or does not match the archive."""


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``path`` relative to the archive root."""

    path: str
    label: str
    id: str
    metadata: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass
class Archive:
    """A labelled image archive: root folder, samples in a stable order, sorted class names."""

    root: Path
    samples: list[Sample]
    name: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """Sorted class names."""
        return sorted({s.label for s in self.samples})

    def labels(self) -> np.ndarray:
        """Class index of every sample (``int64 (n,)``), in :attr:`classes` order."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[s.label] for s in self.samples], dtype=np.int64)

    def abspath(self, sample: Sample) -> Path:
        """Absolute path of a sample's image file."""
        return self.root / sample.path

    def fingerprint(self) -> str:
        """sha256 over the (path, label) list: identifies the file list a split belongs to."""
        h = hashlib.sha256()
        for s in self.samples:
            h.update(f"{s.path}\t{s.label}\n".encode("utf-8"))
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.samples)


def read_folder(root: str | os.PathLike, *, allow_empty_classes: bool = False) -> Archive:
    """Read an archive laid out as ``root/<class>/<image>``; files at the top level are ignored.

    An empty class folder raises :class:`EmptyClassError` unless ``allow_empty_classes`` (then
    it is skipped and reported in ``Archive.skipped``).
    """
    root = Path(root)
    if not root.is_dir():
        raise ArchiveNotFoundError(f"archive folder {root} does not exist or is not a folder")
    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ArchiveNotFoundError(
            f"archive folder {root} has no class sub-folders (expected {root}/<class>/<image>)"
        )
    for cdir in class_dirs:
        files = sorted(
            f for f in cdir.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            if allow_empty_classes:
                skipped.append((cdir.name + "/", "empty class folder"))
                log.warning("skipping empty class folder %s", cdir)
                continue
            raise EmptyClassError(
                f"class folder {cdir} holds no images ({', '.join(IMAGE_EXTENSIONS)}): remove "
                f"it or add images"
            )
        for f in files:
            rel = f.relative_to(root).as_posix()
            samples.append(Sample(path=rel, label=cdir.name, id=rel))
    return Archive(root=root, samples=samples, name=root.name, skipped=skipped)


def read_csv(
    manifest: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    path_column: str = "path",
    label_column: str = "label",
    id_column: str | None = None,
) -> Archive:
    """Read an archive from a CSV manifest with ``path`` and ``label`` columns (others = metadata).

    Paths are relative to ``root`` (default: the manifest's folder). A missing column or an
    empty label raises :class:`ManifestError`.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ArchiveNotFoundError(f"CSV manifest {manifest} does not exist")
    base = Path(root) if root is not None else manifest.parent
    with open(manifest, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        for col in (path_column, label_column) + ((id_column,) if id_column else ()):
            if col not in columns:
                raise ManifestError(
                    f"CSV manifest {manifest} has no '{col}' column (columns: {columns}); "
                    f"training needs a path and a label per image"
                )
        samples = []
        seen: set[str] = set()
        for lineno, row in enumerate(reader, start=2):
            path = (row.get(path_column) or "").strip()
            label = (row.get(label_column) or "").strip()
            if not path or not label:
                raise ManifestError(
                    f"CSV manifest {manifest} line {lineno}: empty "
                    f"{'path' if not path else 'label'}"
                )
            sid = (row.get(id_column) or "").strip() if id_column else path
            if sid in seen:
                raise ManifestError(f"CSV manifest {manifest} line {lineno}: duplicate id {sid!r}")
            seen.add(sid)
            meta = {
                k: v
                for k, v in row.items()
                if k not in (path_column, label_column, id_column) and k is not None
            }
            samples.append(Sample(path=path, label=label, id=sid, metadata=meta))
    if not samples:
        raise ManifestError(f"CSV manifest {manifest} lists no images")
    missing = [s.path for s in samples if not (base / s.path).is_file()]
    if missing:
        raise ArchiveNotFoundError(
            f"{len(missing)} file(s) listed in {manifest} do not exist under {base}: "
            f"{missing[:5]}"
        )
    return Archive(root=base, samples=samples, name=manifest.stem)


def open_archive(source: str | os.PathLike, **kwargs: Any) -> Archive:
    """Open a folder archive or a ``.csv`` manifest, whichever ``source`` is."""
    p = Path(source)
    if p.suffix.lower() == ".csv":
        return read_csv(p, **kwargs)
    return read_folder(p, **kwargs)


def check_images(
    archive: Archive,
    *,
    skip_corrupt: bool = False,
    indices: Iterable[int] | None = None,
) -> Archive:
    """Decode every image once; raise :class:`CorruptImageError` or drop and report the bad ones.

    Returns the archive (a new one without the bad samples when ``skip_corrupt``); the dropped
    files are listed in ``Archive.skipped`` and logged.
    """
    from rsir_sdk.errors import ImageLoadError
    from rsir_sdk.images import load_image

    bad: list[tuple[str, str]] = []
    idx = range(len(archive.samples)) if indices is None else indices
    for i in idx:
        s = archive.samples[i]
        try:
            load_image(archive.abspath(s))
        except ImageLoadError as exc:
            bad.append((s.path, exc.reason))
    if not bad:
        return archive
    if not skip_corrupt:
        raise CorruptImageError(bad)
    for path, why in bad:
        log.warning("skipping unreadable image %s: %s", path, why)
    bad_paths = {p for p, _ in bad}
    return Archive(
        root=archive.root,
        samples=[s for s in archive.samples if s.path not in bad_paths],
        name=archive.name,
        skipped=archive.skipped + bad,
    )


@dataclass
class Split:
    """A train (= retrieval database) / query split, stored as sample ids."""

    protocol: str
    seed: int
    train_ids: list[str]
    query_ids: list[str]
    archive_fingerprint: str = ""
    dataset: str = ""

    def indices(self, archive: Archive) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the train and query samples in ``archive`` (split order kept)."""
        pos = {s.id: i for i, s in enumerate(archive.samples)}
        missing = [i for i in self.train_ids + self.query_ids if i not in pos]
        if missing:
            raise SplitError(
                f"{len(missing)} id(s) of the split are not in the archive (e.g. {missing[:3]}): "
                f"the split file belongs to another archive; draw a new one"
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


def make_split(archive: Archive, protocol: str = "80-20", seed: int = 0) -> Split:
    """Draw a stratified split: per class, ``round(frac * n)`` images to train, the rest query.

    Deterministic for a given archive, protocol and seed (``numpy.random.default_rng(seed)``,
    classes in sorted order). Every class needs at least 2 images so both sides get one.
    """
    if protocol not in PROTOCOLS:
        raise SplitError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    frac = PROTOCOLS[protocol]
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    for s in archive.samples:
        by_class.setdefault(s.label, []).append(s.id)
    small = {c: len(v) for c, v in by_class.items() if len(v) < 2}
    if small:
        raise SplitError(
            f"class(es) with fewer than 2 images cannot be split into train and query: {small}; "
            f"add images or remove the class"
        )
    train, query = [], []
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
    path.write_text(json.dumps(split.to_json(), indent=1), encoding="utf-8")
    return path


def load_split(path: str | os.PathLike, archive: Archive | None = None) -> Split:
    """Read a split file; with ``archive``, check that every id is in it."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        split = Split(
            protocol=str(obj["protocol"]),
            seed=int(obj["seed"]),
            train_ids=[str(x) for x in obj["train"]],
            query_ids=[str(x) for x in obj["query"]],
            archive_fingerprint=str(obj.get("archive_fingerprint", "")),
            dataset=str(obj.get("dataset", "")),
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SplitError(f"cannot read split file {path}: {exc}") from None
    if archive is not None:
        split.indices(archive)
    return split


def split_for(
    archive: Archive, split_file: str | os.PathLike | None, protocol: str, seed: int
) -> Split:
    """Load ``split_file`` when it exists, else draw a split (and save it there when given)."""
    if split_file is not None and Path(split_file).is_file():
        split = load_split(split_file, archive)
        log.info("using split %s (%s, seed %d)", split_file, split.protocol, split.seed)
        return split
    split = make_split(archive, protocol, seed)
    if split_file is not None:
        save_split(split, split_file)
    return split
