"""Archive ingestion: a folder or CSV manifest of images → binary codes in a Milvus collection.

Why: users arrive with an archive on disk (thousands to millions of files) and want it
searchable with one command that is safe to interrupt. :func:`ingest` lists the archive, skips
the ids the collection already holds, decodes images in a small thread pool while the encoder
runs (so the encoder is never waiting on JPEG decoding), encodes in batches and upserts in
batches. Every image that cannot be indexed is reported (:class:`Failure`, and a CSV report file
through :class:`FailureReport`), never silently dropped.

**Ids** are stable: the manifest's ``id`` column, else the path relative to the archive root
(``Forest/Forest_1001.jpg``), so re-running the same command is idempotent.

**Resuming.** An id that the collection holds is *already present* and is skipped. This is
safe after a ``kill -9`` at any moment because (1) a Milvus row is written whole or not at all,
(2) rows are written only after their image was decoded and encoded, (3) writes are upserts by
id, so an id written twice is stored once, and (4) the collection refuses codes from any other
encoder (:class:`~rsir_sdk.store.MilvusCodeStore`) or, here, made with another raster rule. An
upsert batch cut off part-way leaves some of its ids present and some not; the re-run encodes
exactly the missing ones. Images whose *files changed* since they were indexed keep their old
codes: pass ``skip_existing=False`` (``rsir index --force``) to re-encode everything.

>>> from rsir_sdk import Encoder
>>> from rsir_sdk.ingest import ingest, open_archive, open_collection
>>> enc = Encoder("bundle/")                                                # doctest: +SKIP
>>> store = open_collection(enc.bundle, "./rsir.db", "scenes")               # doctest: +SKIP
>>> summary = ingest(enc, store, open_archive("archive/", label_from="parent"))  # doctest: +SKIP
>>> summary.indexed, summary.skipped, len(summary.failed)                  # doctest: +SKIP
(2500, 0, 3)
"""

from __future__ import annotations

import collections
import csv
import logging
import math
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .bundle import Bundle
from .encoder import Encoder
from .errors import CollectionMismatchError, ImageLoadError, RsirError, StoreError
from .images import DEFAULT_MAX_PIXELS
from .preprocess import prepare
from .rasters import RasterRule, read_raster
from .store import MAX_ID_LEN, MAX_LABEL_LEN, MAX_PATH_LEN, MilvusCodeStore, check_same_encoder

log = logging.getLogger(__name__)

#: file extensions listed from a folder archive (case-insensitive); other files are ignored
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".jp2")
#: how labels are taken from a folder archive
LABEL_FROM = ("none", "parent", "top")
#: the columns of the failure report
REPORT_COLUMNS = ("id", "path", "stage", "reason")
EXISTS_CHUNK = 1000


class IngestError(RsirError, ValueError):
    """The archive or manifest cannot be listed (missing folder, bad CSV, unknown column)."""


class RasterRuleMismatchError(CollectionMismatchError):
    """The collection was filled with images converted by another raster rule."""


class IngestInterrupted(KeyboardInterrupt):
    """Ingestion stopped by Ctrl-C; what was encoded was written first. Re-run to resume."""

    def __init__(self, summary: "IngestSummary"):
        self.summary = summary
        super().__init__(
            f"interrupted after indexing {summary.indexed} images; re-run the same command to "
            f"resume (already indexed ids are skipped)"
        )


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class Item:
    """One image of an archive: stable ``id``, ``path`` relative to ``root`` (or absolute)."""

    id: str
    path: str
    root: str
    label: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> Path:
        """The image file (``root / path``; ``path`` when it is absolute)."""
        return Path(self.root, self.path)


@dataclass(frozen=True)
class Failure:
    """An image that was not indexed: its id, file, the stage that failed and why."""

    id: str
    path: str
    stage: str  # "list" | "read" | "encode"
    reason: str


@dataclass
class ArchiveListing:
    """The images of an archive in a stable order, plus what was left out while listing."""

    root: Path
    items: list[Item]
    kind: str  # "folder" | "csv"
    ignored: list[str] = field(default_factory=list)  # files with other extensions
    invalid: list[Failure] = field(default_factory=list)  # rows refused before reading

    def __len__(self) -> int:
        return len(self.items)


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
        raise IngestError("root is only used with a CSV manifest (a folder is its own root)")
    return scan_folder(p, label_from=label_from, extensions=extensions)


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
        raise IngestError(f"label_from must be one of {', '.join(LABEL_FROM)}, got {label_from!r}")
    if not root.exists():
        raise IngestError(f"archive folder {root} does not exist")
    if not root.is_dir():
        raise IngestError(f"archive {root} is not a folder (or a .csv manifest)")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    root_s = str(root)
    items: list[Item] = []
    ignored: list[str] = []
    invalid: list[Failure] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
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
            problem = _check_item(item)
            if problem:
                invalid.append(Failure(item.id, str(item.file), "list", problem))
            else:
                items.append(item)
    if ignored:
        log.info("%d files under %s are not images by extension and were ignored", len(ignored), root)
    return ArchiveListing(root, items, "folder", ignored, invalid)


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
    Paths are relative to ``root`` (default: the manifest's folder) or absolute. Ids default to
    the ``id`` column when there is one, else the path as written. Rows with an empty path, an
    empty or duplicate id are reported as failures (stage ``list``), not dropped silently.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise IngestError(f"CSV manifest {manifest} does not exist")
    base = Path(root) if root is not None else manifest.parent
    if not base.is_dir():
        raise IngestError(f"archive root {base} for {manifest} is not a folder")
    items: list[Item] = []
    invalid: list[Failure] = []
    seen: dict[str, int] = {}
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c for c in (reader.fieldnames or []) if c is not None]
            if path_column not in columns:
                raise IngestError(
                    f"CSV manifest {manifest} has no '{path_column}' column (columns: {columns}); "
                    f"name the image column with --path-column"
                )
            for col, given in ((id_column, "--id-column"), (label_column, "--label-column")):
                if col is not None and col not in columns:
                    raise IngestError(f"CSV manifest {manifest} has no '{col}' column ({given}); "
                                      f"columns: {columns}")
            id_col = id_column if id_column is not None else ("id" if "id" in columns else None)
            label_col = label_column if label_column is not None else (
                "label" if "label" in columns else None)
            meta_cols = [c for c in columns if c not in (path_column, id_col, label_col)]
            for lineno, row in enumerate(reader, start=2):
                path = (row.get(path_column) or "").strip().replace("\\", "/")
                while path.startswith("./"):
                    path = path[2:]
                sid = (row.get(id_col) or "").strip() if id_col else path
                label = (row.get(label_col) or "").strip() if label_col else ""
                meta = {c: _cell(row.get(c)) for c in meta_cols if (row.get(c) or "").strip()}
                item = Item(sid, path, str(base), label, meta)
                where = f"{manifest.name} line {lineno}"
                if not path:
                    invalid.append(Failure(sid or f"line {lineno}", "", "list", f"{where}: empty path"))
                    continue
                if not sid:
                    invalid.append(Failure(f"line {lineno}", str(item.file), "list", f"{where}: empty id"))
                    continue
                if sid in seen:
                    invalid.append(Failure(sid, str(item.file), "list",
                                           f"{where}: duplicate id (first on line {seen[sid]})"))
                    continue
                seen[sid] = lineno
                problem = _check_item(item)
                if problem:
                    invalid.append(Failure(sid, str(item.file), "list", f"{where}: {problem}"))
                    continue
                items.append(item)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise IngestError(f"CSV manifest {manifest} cannot be read: {exc}") from None
    if not items and not invalid:
        raise IngestError(f"CSV manifest {manifest} lists no images")
    return ArchiveListing(base, items, "csv", [], invalid)


def _check_item(item: Item) -> str | None:
    if len(item.id.encode("utf-8")) > MAX_ID_LEN:
        return f"id is longer than {MAX_ID_LEN} bytes"
    if len(item.label.encode("utf-8")) > MAX_LABEL_LEN:
        return f"label is longer than {MAX_LABEL_LEN} bytes"
    if len(str(item.file.absolute()).encode("utf-8")) > MAX_PATH_LEN:
        return f"path is longer than {MAX_PATH_LEN} bytes"
    return None


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


# --------------------------------------------------------------------------- the report


class FailureReport:
    """The failure report file: a CSV with ``id,path,stage,reason``, one row per failed image.

    Rows are flushed as they are written, so a report survives a crash. ``close()`` removes
    the file when nothing failed (no stale report from an earlier run is left behind).

    >>> with FailureReport("failed.csv") as rep:                # doctest: +SKIP
    ...     rep.add(Failure("a.jpg", "/data/a.jpg", "read", "the file is empty (0 bytes)"))
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.count = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", newline="", encoding="utf-8")
        except OSError as exc:
            raise IngestError(f"cannot write the failure report {self.path}: {exc}") from None
        self._writer = csv.writer(self._fh)
        self._writer.writerow(REPORT_COLUMNS)
        self._fh.flush()

    def add(self, failure: Failure) -> None:
        """Append one failure (and flush)."""
        self._writer.writerow([failure.id, failure.path, failure.stage, failure.reason])
        self._fh.flush()
        self.count += 1

    def close(self) -> None:
        """Close the file; delete it when it holds no failure."""
        if self._fh.closed:
            return
        self._fh.close()
        if self.count == 0:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FailureReport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_report(path: str | os.PathLike) -> list[Failure]:
    """Read a failure report written by :class:`FailureReport`."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"failure report {path} does not exist (nothing failed last time?)")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "id" not in reader.fieldnames:
            raise IngestError(f"{path} is not a failure report (no 'id' column)")
        return [Failure(r["id"], r.get("path", ""), r.get("stage", ""), r.get("reason", ""))
                for r in reader]


# --------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class EncodedBatch:
    """Items that were decoded and encoded, their packed codes and georeferencing."""

    items: list[Item]
    codes: np.ndarray  # uint8 (n, bits/8)
    georefs: list[dict[str, Any]]


def iter_codes(
    encoder: Encoder,
    items: Iterable[Item],
    *,
    rule: RasterRule | str | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_failure: Callable[[Failure], None] | None = None,
) -> Iterator[EncodedBatch]:
    """Decode ``items`` in a thread pool and encode them in batches, in order.

    Decoding (Pillow, tifffile, numpy) releases the GIL, and so does onnxruntime, so ``workers``
    threads prepare the next images while the encoder runs. Images that cannot be read or
    encoded go to ``on_failure`` and are left out of the batches.

    >>> for batch in iter_codes(enc, open_archive("archive/").items):     # doctest: +SKIP
    ...     print(len(batch.items), batch.codes.shape)
    """
    rule = RasterRule() if rule is None else (rule if isinstance(rule, RasterRule) else RasterRule.parse(rule))
    workers = max(1, int(workers or default_workers()))
    bs = max(1, int(batch_size or encoder.batch_size))
    window = workers * 4 + bs
    report = on_failure or (lambda f: log.warning("not indexed: %s (%s)", f.path, f.reason))
    preprocess = encoder.bundle.preprocess
    source = iter(items)
    pending: collections.deque[tuple[Item, Future]] = collections.deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rsir-decode")
    batch: list[tuple[Item, np.ndarray, dict]] = []
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                pending.append((item, pool.submit(_prepare, item, rule, preprocess, max_pixels)))
            if not pending:
                break
            item, fut = pending.popleft()
            result = fut.result()
            if isinstance(result, Failure):
                report(result)
            else:
                batch.append((item, *result))
            if len(batch) >= bs:
                out = _encode(encoder, batch, report)
                batch = []
                if out is not None:
                    yield out
        if batch:
            out = _encode(encoder, batch, report)
            if out is not None:
                yield out
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _prepare(item: Item, rule: RasterRule, preprocess: Mapping[str, Any], max_pixels):
    try:
        raster = read_raster(item.file, rule, max_pixels=max_pixels)
        return prepare(raster.rgb, preprocess), raster.georef
    except ImageLoadError as exc:
        return Failure(item.id, str(item.file), "read", exc.reason)
    except MemoryError:
        return Failure(item.id, str(item.file), "read", "not enough memory to decode the image")
    except Exception as exc:  # a decoder bug on one odd file must not stop a million-image run
        return Failure(item.id, str(item.file), "read", f"{type(exc).__name__}: {exc}")


def _encode(encoder: Encoder, batch, report) -> EncodedBatch | None:
    items = [b[0] for b in batch]
    try:
        codes = encoder.encode_arrays(np.stack([b[1] for b in batch]))
        return EncodedBatch(items, codes, [b[2] for b in batch])
    except Exception as exc:  # fall back to one image at a time to find the culprit
        log.warning("a batch of %d failed to encode (%s); retrying one by one", len(batch), exc)
    kept, codes = [], []
    for item, arr, geo in batch:
        try:
            codes.append(encoder.encode_arrays(arr[None]))
            kept.append((item, geo))
        except Exception as exc:
            report(Failure(item.id, str(item.file), "encode", f"{type(exc).__name__}: {exc}"))
    if not kept:
        return None
    return EncodedBatch([k[0] for k in kept], np.concatenate(codes), [k[1] for k in kept])


def default_workers() -> int:
    """Decoding threads: the number of CPUs, at least 2 and at most 8."""
    return max(2, min(8, os.cpu_count() or 2))


@dataclass
class IngestProgress:
    """Where an ingestion stands: images handled so far out of ``total`` and how."""

    total: int
    indexed: int = 0  # written to Milvus
    encoded: int = 0  # encoded, written or waiting for the next upsert
    skipped: int = 0  # already present
    failed: int = 0

    @property
    def done(self) -> int:
        """Images handled (encoded, skipped or failed)."""
        return self.encoded + self.skipped + self.failed


@dataclass
class IngestSummary:
    """What an ingestion did. ``failed`` lists every image not indexed, with its reason."""

    total: int = 0
    indexed: int = 0
    skipped: int = 0
    failed: list[Failure] = field(default_factory=list)
    ignored: int = 0
    seconds: float = 0.0
    report: str | None = None
    collection: str = ""
    uri: str = ""

    @property
    def ok(self) -> bool:
        """True when every listed image is in the collection."""
        return not self.failed

    @property
    def images_per_second(self) -> float:
        """Images indexed per second of wall time."""
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def reasons(self, top: int = 5) -> list[tuple[str, int]]:
        """The most common failure reasons with their counts."""
        counts = collections.Counter(f"{f.stage}: {f.reason}" for f in self.failed)
        return counts.most_common(top)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "total": self.total, "indexed": self.indexed, "skipped": self.skipped,
            "failed": len(self.failed), "ignored": self.ignored,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "report": self.report, "collection": self.collection, "uri": self.uri,
            "failures": [f.__dict__ for f in self.failed],
        }


def ingest(
    encoder: Encoder,
    store: MilvusCodeStore,
    archive: ArchiveListing,
    *,
    rule: RasterRule | str | None = None,
    skip_existing: bool = True,
    only_ids: Iterable[str] | None = None,
    relative_paths: bool = False,
    workers: int | None = None,
    batch_size: int | None = None,
    upsert_batch: int = 512,
    flush_seconds: float = 10.0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    report: FailureReport | None = None,
    progress: Callable[[IngestProgress], None] | None = None,
) -> IngestSummary:
    """Encode every image of ``archive`` not yet in ``store`` and upsert its code; resumable.

    Args:
        encoder: the bundle's :class:`~rsir_sdk.Encoder`.
        store: the collection (see :func:`open_collection`).
        archive: from :func:`open_archive`.
        rule: raster rule for TIFFs (see :mod:`rsir_sdk.rasters`); must match the rule the
            collection records, if any.
        skip_existing: skip ids the collection holds (resume); ``False`` re-encodes them.
        only_ids: index only these ids (e.g. those of a failure report: retry).
        relative_paths: store paths relative to the archive root instead of absolute ones.
        workers, batch_size: decoding threads and encoder batch size.
        upsert_batch, flush_seconds: rows per upsert; pending rows are also written after
            this many seconds, so little work is lost to a crash.
        report: failures are also written here as they happen.
        progress: called with an :class:`IngestProgress` as work advances.

    Returns an :class:`IngestSummary`. Raises :class:`~rsir_sdk.errors.StoreError` when Milvus
    fails (re-run to resume) and :class:`IngestInterrupted` on Ctrl-C after writing what was
    encoded.
    """
    t0 = time.perf_counter()
    rule = RasterRule() if rule is None else (rule if isinstance(rule, RasterRule) else RasterRule.parse(rule))
    check_raster_rule(store, rule)
    identity = encoder.bundle.identity()
    if store.encoder is not None:  # fail before any work when the encoders differ
        check_same_encoder(store.encoder, identity, store.collection)
    items = archive.items
    invalid = archive.invalid
    if only_ids is not None:
        wanted = set(only_ids)
        items = [it for it in items if it.id in wanted]
        invalid = [f for f in invalid if f.id in wanted]
    summary = IngestSummary(total=len(items) + len(invalid), ignored=len(archive.ignored),
                            report=str(report.path) if report else None,
                            collection=store.collection, uri=store.uri)
    state = IngestProgress(total=summary.total)

    def fail(f: Failure) -> None:
        summary.failed.append(f)
        state.failed += 1
        if report is not None:
            report.add(f)
        log.info("not indexed: %s: %s: %s", f.path, f.stage, f.reason)

    def tick() -> None:
        if progress is not None:
            progress(state)

    for f in invalid:
        fail(f)
    tick()

    def unseen() -> Iterator[Item]:
        for start in range(0, len(items), EXISTS_CHUNK):
            chunk = items[start : start + EXISTS_CHUNK]
            present = store.existing_ids([it.id for it in chunk]) if skip_existing else set()
            if present:
                state.skipped += len(present)
                summary.skipped += len(present)
                tick()
            for it in chunk:
                if it.id not in present:
                    yield it

    # encoded rows waiting for the next upsert, one tuple per batch (a single append each, so
    # Ctrl-C never leaves a half-added batch)
    pending: list[tuple[list[str], np.ndarray, list[str], list[str], list[dict]]] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        last_flush = time.monotonic()
        if not pending:
            return
        ids = [i for p in pending for i in p[0]]
        try:
            store.upsert(ids, np.concatenate([p[1] for p in pending]),
                         [x for p in pending for x in p[2]], [x for p in pending for x in p[3]],
                         [x for p in pending for x in p[4]], encoder=identity,
                         batch_size=upsert_batch)
        except StoreError as exc:
            raise StoreError(
                f"{exc} ({summary.indexed} images were indexed before this; re-run the same "
                f"command to resume)"
            ) from exc
        pending.clear()
        summary.indexed += len(ids)
        state.indexed = summary.indexed
        tick()

    def n_pending() -> int:
        return sum(len(p[0]) for p in pending)

    stream = iter_codes(encoder, unseen(), rule=rule, workers=workers, batch_size=batch_size,
                        max_pixels=max_pixels, on_failure=fail)
    try:
        for batch in stream:
            its = batch.items
            pending.append((
                [it.id for it in its],
                batch.codes,
                [it.label for it in its],
                [it.path if relative_paths else str(it.file.absolute()) for it in its],
                [{**geo, **it.metadata} if geo else dict(it.metadata)
                 for it, geo in zip(its, batch.georefs)],
            ))
            state.encoded += len(its)
            tick()
            if n_pending() >= upsert_batch or time.monotonic() - last_flush >= flush_seconds:
                flush()
        flush()
    except KeyboardInterrupt:
        stream.close()
        flush()  # what was encoded is kept: the re-run starts after it
        summary.seconds = time.perf_counter() - t0
        raise IngestInterrupted(summary) from None
    finally:
        stream.close()
    summary.seconds = time.perf_counter() - t0
    return summary


# --------------------------------------------------------------------------- the collection


def check_raster_rule(store: MilvusCodeStore, rule: RasterRule) -> None:
    """Raise :class:`RasterRuleMismatchError` when the collection records another raster rule."""
    recorded = (store.encoder or {}).get("raster_rule")
    if recorded is None:
        return
    if RasterRule.from_dict(recorded) != rule:
        raise RasterRuleMismatchError(
            f"collection {store.collection!r} was indexed with the raster rule "
            f"'{RasterRule.from_dict(recorded).describe()}', this run asks for "
            f"'{rule.describe()}': images converted differently give codes that do not compare. "
            f"Use the same --bands/--stretch/--nodata, or another collection"
        )


def recorded_rule(store: MilvusCodeStore) -> RasterRule | None:
    """The raster rule a collection records (``None`` when it records none)."""
    recorded = (store.encoder or {}).get("raster_rule")
    return RasterRule.from_dict(recorded) if recorded is not None else None


def default_collection(bundle: Bundle) -> str:
    """The default collection name of a bundle: ``<method>_<bits>_<encoder_id>``."""
    name = f"{bundle.method}_{bundle.bits}_{bundle.encoder_id}"
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def open_collection(
    bundle: Bundle,
    uri: str,
    collection: str | None = None,
    token: str | None = None,
    *,
    rule: RasterRule | None = None,
    index_type: str | None = None,
    index_params: Mapping[str, Any] | None = None,
    search_params: Mapping[str, Any] | None = None,
    create: bool = True,
    lite_wait: float = 30.0,
) -> MilvusCodeStore:
    """Open (or create) the collection for ``bundle``; a new one records ``rule`` too.

    The name defaults to :func:`default_collection`. A new collection records the bundle's
    identity and the raster rule (default rule when ``None``), an existing one is checked
    against the bundle (:class:`~rsir_sdk.errors.CollectionMismatchError` otherwise).

    For a Milvus Lite file, first waits up to ``lite_wait`` seconds for the Lite server of a
    killed earlier run to exit (see :func:`wait_for_lite_file`).
    """
    if "://" not in str(uri):
        wait_for_lite_file(uri, lite_wait)
    identity = dict(bundle.identity())
    identity["raster_rule"] = (rule or RasterRule()).to_dict()
    return MilvusCodeStore(
        uri, collection or default_collection(bundle), bits=bundle.bits, token=token,
        encoder=identity, index_type=index_type, index_params=index_params,
        search_params=search_params, create=create,
    )


def lite_server_pids(db_file: str | os.PathLike) -> list[int]:
    """Process ids of Milvus Lite servers serving ``db_file`` (Linux; ``[]`` elsewhere)."""
    target = os.path.abspath(db_file)
    out: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
        except OSError:
            continue
        if len(args) >= 2 and args[0].endswith(b"/milvus") and b"milvus_lite" in args[0]:
            if os.fsdecode(args[1]) == target:
                out.append(int(entry))
    return out


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def wait_for_lite_file(db_file: str | os.PathLike, timeout: float = 30.0) -> None:
    """Make sure no other process serves a Milvus Lite file before opening it.

    Milvus Lite allows one process per file. When a process that had the file open is killed
    (``kill -9``), its Lite server notices the released lock and exits on its own within a
    few seconds; opening the file meanwhile would start a second server on the same data. This
    waits for such a server to exit. A file that a *running* program holds raises
    :class:`~rsir_sdk.errors.StoreError` at once.
    """
    path = Path(db_file).absolute()
    pids = lite_server_pids(path)
    if not pids or any(_parent_pid(p) == os.getpid() for p in pids):
        return  # nobody serves it, or this process does (pymilvus reuses its own server)
    try:
        import fcntl
    except ImportError:  # not POSIX: Milvus Lite does not run there either
        return
    # a server whose client is alive holds the lock file; an orphaned one does not
    lock = path.parent / f".{path.name}.lock"
    try:
        fh = open(lock, "a")
    except OSError:
        fh = None
    if fh is not None:
        with fh:
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise StoreError(
                    f"Milvus Lite file {path} is open in another running program (one process "
                    f"per file): close it there, or use a Milvus server URI"
                ) from None
            fcntl.lockf(fh, fcntl.LOCK_UN)
    deadline = time.monotonic() + timeout
    if pids:
        log.info("waiting for the Milvus Lite server of an earlier run (pid %s) to exit", pids)
    while pids:
        if time.monotonic() > deadline:
            raise StoreError(
                f"Milvus Lite file {path} is still served by process {pids} after {timeout:.0f}s; "
                f"stop that process (kill {' '.join(map(str, pids))}) and re-run"
            )
        time.sleep(0.1)
        pids = lite_server_pids(path)

