"""Listing an image archive: a folder tree or a CSV manifest, in a stable order, with stable ids.

Why one module: indexing (``rsir index``, :meth:`rsir_sdk.Retriever.index`), evaluation,
training and quantization calibration all start from "the images of this archive". They share
this lister, its one extension list (:data:`IMAGE_EXTENSIONS`) and its id rule, so an image that
can be indexed can also be trained on, and a split written by training names the same ids that
indexing stores.

**Ids** are stable: the manifest's ``id`` column, else the path relative to the archive root
with ``/`` separators (``Forest/Forest_1001.jpg``). **Labels**: ``label_from="top"`` takes the
first folder under the root (the ``root/<class>/...`` layout that training reads), ``"parent"``
the folder holding the file; a manifest's ``label`` column. Rows that cannot be used (empty path,
duplicate id, over-long fields) are kept in :attr:`ArchiveListing.invalid` as
:class:`~rsir_sdk.failures.Failure` records, never dropped silently.

>>> listing = open_archive("archive/", label_from="top")          # doctest: +SKIP
>>> listing.items[0].id, listing.items[0].label, listing.classes[:2]  # doctest: +SKIP
('Forest/Forest_1001.jpg', 'Forest', ['AnnualCrop', 'Forest'])
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .errors import ArchiveError, InvalidInputError
from .failures import Failure
from .geo import iso, place_of_columns
from .store import rows

log = logging.getLogger(__name__)

#: file extensions listed from a folder archive (case-insensitive); other files are ignored
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".jp2")
#: how labels are taken from a folder archive
LABEL_FROM = ("none", "parent", "top")
#: manifest columns that give an item's place and time (:func:`rsir_sdk.geo.place_of_columns`)
PLACE_COLUMNS = ("lon", "lat", "west", "south", "east", "north", "time")


@dataclass(frozen=True)
class Item:
    """One image of an archive: stable ``id``, ``path`` relative to ``root`` (or absolute)."""

    id: str
    path: str
    root: str
    label: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def file(self) -> Path:
        """The image file (``root / path``; ``path`` when it is absolute)."""
        return Path(self.root, self.path)


@dataclass
class ArchiveListing:
    """The images of an archive in a stable order, plus what was left out while listing."""

    root: Path
    items: list[Item]
    kind: str  # "folder" | "csv"
    ignored: list[str] = field(default_factory=list)  # files with other extensions
    invalid: list[Failure] = field(default_factory=list)  # rows refused before reading
    name: str = ""

    def __len__(self) -> int:
        return len(self.items)

    @property
    def classes(self) -> list[str]:
        """Sorted distinct labels."""
        return sorted({it.label for it in self.items})

    def labels(self) -> np.ndarray:
        """Class index of every item (``int64 (n,)``), in :attr:`classes` order."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[it.label] for it in self.items], dtype=np.int64)

    def fingerprint(self) -> str:
        """sha256 over the (path, label) list: identifies the file list a split belongs to."""
        h = hashlib.sha256()
        for it in self.items:
            h.update(f"{it.path}\t{it.label}\n".encode("utf-8"))
        return h.hexdigest()

    def by_id(self) -> dict[str, Item]:
        """Items keyed by id."""
        return {it.id: it for it in self.items}

    def subset(self, ids: Sequence[str]) -> "ArchiveListing":
        """A listing of the items with these ids, in the order given (unknown ids raise)."""
        pos = self.by_id()
        missing = [i for i in ids if i not in pos]
        if missing:
            raise ArchiveError(
                f"{len(missing)} id(s) are not in the archive {self.root} (e.g. {missing[:3]})"
            )
        return ArchiveListing(self.root, [pos[i] for i in ids], self.kind, name=self.name)


def normalise_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    """``["tif", ".JPG"]`` → ``(".tif", ".jpg")``."""
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions if e)


def open_archive(
    source: str | os.PathLike,
    *,
    label_from: str = "none",
    root: str | os.PathLike | None = None,
    path_column: str = "path",
    id_column: str | None = None,
    label_column: str | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> ArchiveListing:
    """List a folder archive or a ``.csv`` manifest, whichever ``source`` is.

    >>> open_archive("archive/", label_from="parent").items[0]              # doctest: +SKIP
    Item(id='Forest/Forest_1001.jpg', path='Forest/Forest_1001.jpg', root='archive', label='Forest', ...)
    """
    p = Path(source)
    if p.suffix.lower() == ".csv" and not p.is_dir():
        return read_manifest(p, root=root, path_column=path_column, id_column=id_column,
                             label_column=label_column)
    if root is not None:
        raise ArchiveError("root is only used with a CSV manifest (a folder is its own root)")
    return scan_folder(p, label_from=label_from, extensions=extensions)


def _walk(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` of ``root`` in sorted order, hidden folders skipped, following links to
    folders outside the archive (an archive assembled from links to other disks is listed
    whole; ``os.walk`` alone lists none of them, without a word). A folder is never listed
    twice: a link into the archive (its folder is listed under its own name), to a folder
    already listed, or to a folder that holds the archive (a loop) is skipped with a warning
    that names it."""
    real_root = os.path.realpath(root)
    seen = {real_root}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            path = os.path.join(dirpath, name)
            real = os.path.realpath(path)
            why = _skipped_folder(path, real, real_root, seen)
            if why:
                log.warning("skipped the folder %s: it leads to %s, %s", path, real, why)
                continue
            seen.add(real)
            keep.append(name)
        dirnames[:] = keep
        yield dirpath, dirnames, filenames


def _skipped_folder(path: str, real: str, real_root: str, seen: set[str]) -> str | None:
    """Why the folder at ``path`` (real path ``real``) is not walked, or None."""
    if real == real_root or real_root.startswith(real.rstrip(os.sep) + os.sep):
        return "a folder that holds the archive (a loop)"
    if real in seen:
        return "a folder already listed"
    if os.path.islink(path) and real.startswith(real_root + os.sep):
        return "a folder inside the archive (listed under its own name)"
    return None


def scan_folder(
    root: str | os.PathLike,
    *,
    label_from: str = "none",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> ArchiveListing:
    """List every image under ``root`` (recursively, sorted; hidden files and folders skipped).

    ``label_from``: ``"none"``; ``"parent"`` (the folder holding the file); ``"top"`` (the
    first folder under ``root``, as training's ``root/<class>/...`` layout reads).
    Ids are the paths relative to ``root`` with ``/`` separators.
    """
    root = Path(root)
    if label_from not in LABEL_FROM:
        raise ArchiveError(f"label_from must be one of {', '.join(LABEL_FROM)}, got {label_from!r}")
    if not root.exists():
        raise ArchiveError(f"archive folder {root} does not exist")
    if not root.is_dir():
        raise ArchiveError(f"archive {root} is not a folder (or a .csv manifest)")
    exts = normalise_extensions(extensions)
    root_s = str(root)
    items: list[Item] = []
    ignored: list[str] = []
    invalid: list[Failure] = []
    for dirpath, dirnames, filenames in _walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if not name.lower().endswith(exts):
                ignored.append(rel)
                continue
            if label_from == "parent":
                label = rel_dir.rsplit("/", 1)[-1]
            elif label_from == "top":
                label = rel_dir.split("/", 1)[0]
            else:
                label = ""
            item = Item(rel, rel, root_s, label)
            problem = check_item(item)
            if problem:
                invalid.append(Failure(item.id, str(item.file), "list", problem))
            else:
                items.append(item)
    if ignored:  # named (a few), so that a misnamed image is seen: .jpeg2, .JPG.bak
        shown = ", ".join(ignored[:3]) + (f" and {len(ignored) - 3} more" if len(ignored) > 3 else "")
        log.info("%d file%s under %s %s by extension and %s ignored: %s", len(ignored),
                 *(("", root, "is not an image", "was") if len(ignored) == 1
                   else ("s", root, "are not images", "were")), shown)
    unlabelled = [it.id for it in items if label_from != "none" and not it.label]
    if unlabelled:  # label_from reads a folder these files do not have
        log.warning("%d images lie directly in %s, with no folder to take a label from: their "
                    "label is empty (e.g. %s)", len(unlabelled), root, unlabelled[0])
    return ArchiveListing(root, items, "folder", ignored, invalid, name=root.resolve().name)


def read_manifest(
    manifest: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    path_column: str = "path",
    id_column: str | None = None,
    label_column: str | None = None,
) -> ArchiveListing:
    """List the images of a CSV manifest: a ``path`` column, optional ``id`` and ``label``.

    Every other column goes into each item's metadata (integers and decimals become numbers,
    so that Milvus filters such as ``metadata["year"] >= 2020`` work; empty cells are left out).
    **Place and period** (docs/geo.md): columns ``lon,lat`` or ``west,south,east,north`` and
    ``time`` (ISO 8601) give the footprint and time, kept as a GeoTIFF's georeferencing is
    (``lonlat_bounds``, ``lonlat``, ``time`` in UTC); a row with half a box or point, a bad
    number or time fails the whole listing (``ArchiveError`` naming the line).
    Paths are relative to ``root`` (default: the manifest's folder) or absolute. Ids default to
    the ``id`` column when there is one, else the path as written. Rows with an empty path, an
    empty or duplicate id are reported as failures (stage ``list``), not dropped silently.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ArchiveError(f"CSV manifest {manifest} does not exist")
    base = Path(root) if root is not None else manifest.parent
    if not base.is_dir():
        raise ArchiveError(f"archive root {base} for {manifest} is not a folder")
    items: list[Item] = []
    invalid: list[Failure] = []
    seen: dict[str, int] = {}
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c for c in (reader.fieldnames or []) if c is not None]
            if path_column not in columns:
                raise ArchiveError(
                    f"CSV manifest {manifest} has no '{path_column}' column (columns: {columns}); "
                    f"name the image column with --path-column"
                )
            for col, given in ((id_column, "--id-column"), (label_column, "--label-column")):
                if col is not None and col not in columns:
                    raise ArchiveError(f"CSV manifest {manifest} has no '{col}' column ({given}); "
                                       f"columns: {columns}")
            id_col = id_column if id_column is not None else ("id" if "id" in columns else None)
            label_col = label_column if label_column is not None else (
                "label" if "label" in columns else None)
            meta_cols = [c for c in columns if c not in (path_column, id_col, label_col)]
            placed = any(c in PLACE_COLUMNS for c in meta_cols)
            for lineno, row in enumerate(reader, start=2):
                path = (row.get(path_column) or "").strip().replace("\\", "/")
                while path.startswith("./"):
                    path = path[2:]
                sid = (row.get(id_col) or "").strip() if id_col else path
                label = (row.get(label_col) or "").strip() if label_col else ""
                meta = {c: _cell(row.get(c)) for c in meta_cols if (row.get(c) or "").strip()}
                where = f"{manifest.name} line {lineno}"
                if placed:
                    meta.update(_place(row, where))
                item = Item(sid, path, str(base), label, meta)
                failure = _row_failure(item, lineno, where, seen)
                if failure is not None:
                    invalid.append(failure)
                    continue
                items.append(item)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ArchiveError(f"CSV manifest {manifest} cannot be read: {exc}") from None
    if not items and not invalid:
        raise ArchiveError(f"CSV manifest {manifest} lists no images")
    return ArchiveListing(base, items, "csv", [], invalid, name=manifest.stem)


def _row_failure(item: Item, lineno: int, where: str, seen: dict[str, int]) -> Failure | None:
    """Why a manifest row cannot be listed (stage ``list``), or None: an empty path, a URL
    (a manifest lists files), an empty or repeated id, or what the store refuses. A row with
    a new id is recorded in ``seen`` (id → line), whether the store takes it or not."""
    sid, path = item.id, item.path
    if not path:
        return Failure(sid or f"line {lineno}", "", "list", f"{where}: empty path")
    if not sid:
        return Failure(f"line {lineno}", str(item.file), "list", f"{where}: empty id")
    if sid in seen:
        return Failure(sid, str(item.file), "list",
                       f"{where}: duplicate id (first on line {seen[sid]})")
    seen[sid] = lineno
    if _URL.match(path):  # else read as a relative path and reported missing
        return Failure(sid, path, "list", f"{where}: a URL; a manifest lists files: download "
                       f"the images first (search takes URLs)")
    problem = check_item(item)
    return Failure(sid, str(item.file), "list", f"{where}: {problem}") if problem else None


def _place(row: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A manifest row's place and time as georeferencing metadata; :class:`ArchiveError`
    naming the line when they are half given or do not parse."""
    try:
        fp, t = place_of_columns(row, where)
    except InvalidInputError as exc:
        raise ArchiveError(str(exc)) from None
    out: dict[str, Any] = {} if t is None else {"time": iso(t)}
    if fp is not None:
        b = fp.box
        out.update(lonlat_bounds=[b.west, b.south, b.east, b.north], lonlat=list(fp.centre))
    return out


def check_item(item: Item) -> str | None:
    """Why an item cannot be stored, or ``None``: the store's one rule
    (:func:`rsir_sdk.store.rows.problem`), asked with the item's absolute path (the longest
    form a collection may store), so that an item listed is an item the store takes."""
    return rows.problem(item.id, item.label, os.path.abspath(item.file), item.metadata)


_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+:/")  # a scheme of 2+ letters: C:/ is a path
_INT = re.compile(r"^-?(0|[1-9][0-9]{0,17})$")
_DECIMAL = re.compile(r"^-?[0-9]+\.[0-9]+([eE][-+]?[0-9]+)?$")


def _cell(value: str | None) -> Any:
    text = (value or "").strip()
    if _INT.match(text):
        return int(text)
    if _DECIMAL.match(text):
        number = float(text)
        return number if math.isfinite(number) else text
    return text
