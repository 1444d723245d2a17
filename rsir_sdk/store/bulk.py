"""Bulk load: a large first load of a server collection from numpy column files, with a journal.

Why: inserts go through the server's message stream, growing segments and compaction (about
32 server CPU-seconds per million rows and a long hand-over before searches are fast). Milvus'
bulk import reads column files straight into sealed segments of up to a million rows: no growing
segments, no compaction churn, and the rows become visible all at once when the task completes.

How: rows are cut into chunks (up to ``chunk_rows``, smaller when long strings would make the
files large); each chunk is written as one ``.npy`` file per field under
``<staging>/<collection>/<chunk>/`` and imported by one task (``do_bulk_insert``). The staging
folder must be readable **by the Milvus server at the same absolute path** (a local or embedded
server, or a shared file system mounted alike); a MinIO/S3 deployment reads from its bucket
instead and is not served by this path (use inserts, or copy the files into the bucket).

**Nothing lost, nothing duplicated.** Milvus does not deduplicate primary keys on import, so a
chunk must be imported exactly once. A journal (``journal.json`` in the staging folder, replaced
atomically) records each chunk: ``written`` (its files are complete), ``submitting`` (written
*before* the task is created), ``submitted`` with the task id (right after), ``done``. An import
task is atomic (its rows appear when it completes; a failed task's segments are dropped). On
the next run every entry is resolved before anything else happens: ``submitted`` waits for its
task (failed: submitted again); ``submitting`` adopts the task that imports exactly its files if
the server lists one, else looks its sampled ids up (all present: done; none: submitted again);
``written`` is submitted. Rows of a chunk are never written elsewhere (they were new when the
chunk was cut), and the ingestion skips ids the collection holds only after this resolution has
made every imported row visible. At the end the row count is checked against the journal's.

One writer per collection at a time (as for any first load).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StoreError
from ..geo import FIELDS as PLACE_FIELDS
from . import fine, server
from .rows import Columns, spans
from .schema import UPSERT_BATCH
from .server import PrepareProgress, Progress

if TYPE_CHECKING:  # pragma: no cover
    from .collection import MilvusCodeStore

log = logging.getLogger(__name__)

#: rows per import task (one task of a million rows measured faster than four of 250,000:
#: the data node runs one task at a time)
CHUNK_ROWS = 1_000_000
#: at most this many bytes of ``.npy`` per chunk (numpy strings take 4 bytes per character of
#: the longest value), so long paths make smaller chunks, not huge files
CHUNK_BYTES = 1 << 30
FIELD_FILES = ("pk", "id", "code", "label", "label_h", "path", "path_h", "metadata", "meta_h")
#: and, for a collection with place fields (format 3), one float64 file per place field
PLACE_FILES = FIELD_FILES + PLACE_FIELDS
_DONE = ("Completed",)
_FAILED = ("Failed", "Failed and cleaned")
POLL_S = 0.5


class Journal:
    """The bulk load's record of its chunks, replaced atomically on every change."""

    def __init__(self, folder: Path, collection: str):
        self.folder = folder
        self.path = folder / "journal.json"
        self.data: dict[str, Any] = {"format": 1, "collection": collection, "count_before": None,
                                     "inserted": 0, "chunks": []}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StoreError(f"bulk-load journal {self.path} cannot be read ({exc}); it "
                                 f"records which chunks were imported: restore it, or remove "
                                 f"the folder {folder} only if the collection is dropped too") from None
            if self.data.get("collection") != collection:
                raise StoreError(f"bulk-load journal {self.path} belongs to collection "
                                 f"{self.data.get('collection')!r}, not {collection!r}")

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return self.data["chunks"]

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.folder)


class BulkLoad:
    """Chunks of new rows → import tasks, resumable through a :class:`Journal`.

    >>> with MilvusCodeStore(uri, "scenes", bits=64) as store:          # doctest: +SKIP
    ...     load = BulkLoad(store, "/data/milvus-staging")
    ...     load.resume()
    ...     load.add(columns)
    ...     stats = load.finish()
    """

    def __init__(self, store: "MilvusCodeStore", staging: str | os.PathLike, *,
                 chunk_rows: int = CHUNK_ROWS, timeout: float | None = None,
                 progress: Progress | None = None, max_age: float | None = None):
        if store.is_lite:
            raise StoreError("Milvus Lite has no bulk import; write with inserts instead")
        self.store = store
        self.conn = store._conn
        self.name = store.collection
        self.folder = Path(staging).absolute() / self.name
        self.chunk_rows = max(1, int(chunk_rows))
        self.timeout = timeout
        self.progress = progress or (lambda p: None)
        self.journal = Journal(self.folder, self.name)
        self.buffer: list[Columns] = []
        self.buffered = 0
        #: a chunk is also cut when its first row has waited this many seconds (an ingestion
        #: that encodes slowly then loses at most that much work to a crash)
        self.max_age = max_age
        self._since: float | None = None
        self.stats: dict[str, Any] = {"chunks": 0, "imported": 0, "write_s": 0.0, "import_s": 0.0}

    # ----------------------------------------------------------------- resume
    def resume(self) -> int:
        """Resolve what an earlier run left (see the module's docs); returns the rows that
        earlier runs imported. Afterwards every imported row is visible to reads."""
        self.store.writer.ensure_created()
        if self.journal.data.get("count_before") is None:
            self.journal.data["count_before"] = server.count_strong(self.conn, self.name)
            self.journal.save()
            return 0
        for entry in self.journal.chunks:
            if entry["state"] == "submitting":
                self._resolve_submitting(entry)
            if entry["state"] == "written":
                self._submit(entry)
        self.wait_all()
        server.wait_serving(self.conn, self.name, 0, server._Deadline(self.name, self.timeout),
                            self.progress)
        return sum(e["rows"] for e in self.journal.chunks if e["state"] == "done")

    def _resolve_submitting(self, entry: dict[str, Any]) -> None:
        """A crash between 'submitting' and 'submitted': find the task, or look the rows up."""
        from pymilvus import utility

        files = ",".join(entry["files"])
        tasks = self.conn.orm_call(utility.list_bulk_insert_tasks, collection_name=self.name,
                                   what=f"listing import tasks of {self.name!r}")
        mine = [t for t in tasks if str(t.infos.get("files", "")) == files]
        if mine:
            newest = max(mine, key=lambda t: t.task_id)
            entry.update(state="submitted", task=int(newest.task_id))
            self.journal.save()
            return
        # no task imports these files; a task older than the server's retention would have
        # completed long ago: make every imported row visible, then look the rows up
        server.wait_serving(self.conn, self.name, 0, server._Deadline(self.name, self.timeout),
                            self.progress)
        present = self.store.existing_ids(entry["sample"])
        if present and len(present) == len(entry["sample"]):
            entry["state"] = "done"
        elif present:
            raise StoreError(f"bulk-load chunk {entry['name']} of {self.name!r} is partly present "
                             f"({len(present)} of {len(entry['sample'])} sampled ids): an import "
                             f"is atomic, so another writer added them; resolve by hand")
        else:
            entry["state"] = "written"
        self.journal.save()

    # ----------------------------------------------------------------- writing
    def add(self, columns: Columns) -> None:
        """Queue new rows (ids the collection does not hold); full chunks are imported."""
        if len(columns) == 0:
            return
        if columns.fine is not None and self.store.fine_bits is not None:
            # the companions by upsert first (a resumed load rewrites them harmlessly): an
            # imported main row always has its mirror row
            for start, end in spans(columns.sizes):
                fine.write(self.conn, self.name, columns, start, end,
                           self.store.scene_test is not None)
        self.buffer.append(columns)
        self.buffered += len(columns)
        if self._since is None:
            self._since = time.monotonic()
        old = self.max_age is not None and time.monotonic() - self._since >= self.max_age
        if self.buffered >= self.chunk_rows or old:
            self.flush()

    def flush(self) -> None:
        """Write and submit what is queued (one or more chunks)."""
        if not self.buffer:
            return
        cols = _concat(self.buffer)
        self.buffer, self.buffered, self._since = [], 0, None
        for start in range(0, len(cols), self.chunk_rows):
            self._write_chunk(cols.take(range(start, min(len(cols), start + self.chunk_rows))))

    def _write_chunk(self, cols: Columns) -> None:
        if _npy_bytes(cols) > CHUNK_BYTES and len(cols) > 1:
            half = len(cols) // 2
            self._write_chunk(cols.take(range(half)))
            self._write_chunk(cols.take(range(half, len(cols))))
            return
        t0 = time.perf_counter()
        name = f"c{len(self.journal.chunks):06d}"
        final = self.folder / name
        part = self.folder / f"{name}.part"
        shutil.rmtree(part, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        part.mkdir(parents=True)
        self.progress(PrepareProgress(f"bulk: writing {name}", 0, len(cols)))
        arrays = _arrays(cols)
        files: tuple[str, ...] = PLACE_FILES if cols.place is not None else FIELD_FILES
        if cols.fine is not None:
            files = files + ("fine_hex",)
        for field in files:
            with open(part / f"{field}.npy", "wb") as fh:
                np.save(fh, arrays[field])
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_dir(part)
        os.replace(part, final)
        _fsync_dir(self.folder)
        sample = [cols.id[i] for i in sorted({0, len(cols) // 2, len(cols) - 1})]
        entry = {"name": name, "rows": len(cols), "state": "written", "task": None,
                 "files": [str(final / f"{f}.npy") for f in files],
                 "sha256": _sha256(final / "pk.npy"), "sample": sample, "attempts": 0}
        self.journal.chunks.append(entry)
        self.journal.save()
        self.stats["write_s"] += time.perf_counter() - t0
        self._submit(entry)

    def _submit(self, entry: dict[str, Any]) -> None:
        from pymilvus import utility

        if entry.get("attempts", 0) >= 3:
            raise StoreError(f"bulk-load chunk {entry['name']} of {self.name!r} failed to import "
                             f"3 times (last: {entry.get('reason') or 'no reason given'})")
        if _sha256(Path(entry["files"][0])) != entry["sha256"]:
            raise StoreError(f"bulk-load chunk files {Path(entry['files'][0]).parent} changed since "
                             f"they were written; remove the chunk from the journal by hand")
        entry["state"] = "submitting"
        entry["attempts"] = entry.get("attempts", 0) + 1
        self.journal.save()
        task = self.conn.orm_call(utility.do_bulk_insert, collection_name=self.name,
                                  files=list(entry["files"]),
                                  what=f"starting the import of {entry['name']} into {self.name!r}")
        entry.update(state="submitted", task=int(task))
        self.journal.save()
        self.stats["chunks"] += 1

    # ----------------------------------------------------------------- waiting
    def wait_all(self) -> int:
        """Wait until every submitted chunk is imported; returns the rows imported meanwhile."""
        from pymilvus import utility

        t0 = time.perf_counter()
        deadline = server._Deadline(self.name, self.timeout)
        imported = 0
        while True:
            pending = [e for e in self.journal.chunks if e["state"] == "submitted"]
            if not pending:
                break
            for entry in pending:
                st = self.conn.orm_call(utility.get_bulk_insert_state, entry["task"],
                                        what=f"reading the import of {entry['name']}")
                name = str(st.state_name)
                if name in _DONE:
                    entry["state"] = "done"
                    imported += entry["rows"]
                    self.journal.save()
                    shutil.rmtree(self.folder / entry["name"], ignore_errors=True)
                elif name in _FAILED:
                    entry["reason"] = str(st.infos.get("failed_reason", ""))
                    log.warning("import of %s into %s failed (%s); submitting it again",
                                entry["name"], self.name, entry["reason"])
                    if "no such file" in entry["reason"]:
                        raise StoreError(
                            f"the Milvus server cannot read the bulk-load files under "
                            f"{self.folder} ({entry['reason'][:160]}): the staging folder must be "
                            f"readable by the server at the same path (a local server), or "
                            f"load with inserts instead")
                    entry["state"] = "written"
                    self.journal.save()
                    self._submit(entry)
            done = sum(e["rows"] for e in self.journal.chunks if e["state"] == "done")
            total = sum(e["rows"] for e in self.journal.chunks)
            self.progress(PrepareProgress("bulk: importing", done, total))
            if any(e["state"] == "submitted" for e in self.journal.chunks):
                deadline.check(f"{total - done} rows still importing")
                time.sleep(POLL_S)
        self.stats["import_s"] += time.perf_counter() - t0
        self.stats["imported"] += imported
        return imported

    def add_rows(self, ids: Any, codes: Any, labels: Any = None, paths: Any = None,
                 metadata: Any = None, *, encoder: Any = None, fine: Any = None) -> int:
        """Check and queue new rows (as :meth:`MilvusCodeStore.insert` would, ``fine`` their
        fine codes); rows numpy cannot carry are inserted at once. Returns how many were
        taken."""
        cols = self.store.writer.columns(ids, codes, labels, paths, metadata, encoder, fine=fine)
        via_insert = needs_insert(cols)
        if via_insert:
            self.note_inserted(len(via_insert))
            self.store.writer.insert(cols.take(via_insert), UPSERT_BATCH)
            keep = set(via_insert)
            cols = cols.take([i for i in range(len(cols)) if i not in keep])
        self.add(cols)
        return len(via_insert) + len(cols)

    def note_inserted(self, rows: int) -> None:
        """Record rows of this job written by inserts instead (values numpy cannot carry)."""
        if rows:
            self.journal.data["inserted"] = int(self.journal.data.get("inserted") or 0) + rows
            self.journal.save()

    def finish(self) -> dict[str, Any]:
        """Import what is queued, wait for every task, make the rows visible, check the row
        count against the journal, remove the journal. Returns timings and counts."""
        self.flush()
        self.wait_all()
        t0 = time.perf_counter()
        server.wait_serving(self.conn, self.name, 0, server._Deadline(self.name, self.timeout),
                            self.progress)
        self.stats["visible_s"] = time.perf_counter() - t0  # the query node takes the segments
        expected = (int(self.journal.data.get("count_before") or 0)
                    + int(self.journal.data.get("inserted") or 0)
                    + sum(e["rows"] for e in self.journal.chunks if e["state"] == "done"))
        found = server.count_strong(self.conn, self.name)
        self.stats.update(expected=expected, count=found)
        if found > expected:
            raise StoreError(
                f"collection {self.name!r} holds {found} rows after the bulk load, "
                f"{found - expected} more than the journal accounts for: another writer, or rows "
                f"imported twice; the journal is kept at {self.journal.path}")
        if found < expected:
            log.warning("collection %s holds %d rows after the bulk load, %d fewer than the "
                        "journal accounts for (deleted meanwhile?)", self.name, found,
                        expected - found)
        shutil.rmtree(self.folder, ignore_errors=True)
        return self.stats

    def stop(self) -> None:
        """Ctrl-C: write and submit what is queued without waiting (the next run resolves it)."""
        self.flush()


def load_columns(store: "MilvusCodeStore", cols: Columns, staging: str | os.PathLike, *,
                 skip_existing: bool = True, chunk_rows: int | None = None,
                 timeout: float | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """:meth:`MilvusCodeStore.bulk_insert` without the final prepare: resolve an earlier run's
    journal, drop ids present, insert the rows numpy cannot carry, import the rest."""
    out: dict[str, Any] = {"rows": len(cols)}
    load = None if store.is_lite else BulkLoad(store, staging, chunk_rows=chunk_rows or CHUNK_ROWS,
                                               timeout=timeout, progress=progress)
    if load is not None:
        out["resumed_rows"] = load.resume()
    if skip_existing and len(cols) and store.count():
        present: set[str] = set()
        for at in range(0, len(cols), 10_000):
            present |= store.existing_ids(cols.id[at : at + 10_000])
        cols = cols.take([i for i, x in enumerate(cols.id) if x not in present])
        out["skipped"] = len(present)
    if store.repairing:  # some ids "absent" hold a main row (no fine-code row): upsert them
        out["upserted"] = store.writer.upsert(cols, UPSERT_BATCH) if len(cols) else 0
        return out
    via_insert = list(range(len(cols))) if load is None else needs_insert(cols)
    if via_insert:
        if load is not None:
            load.note_inserted(len(via_insert))
        store.writer.insert(cols.take(via_insert), UPSERT_BATCH)
        keep = set(via_insert)
        cols = cols.take([i for i in range(len(cols)) if i not in keep])
    out["inserted"] = len(via_insert)
    if load is not None:
        load.add(cols)
        out.update(load.finish())
    out["written"] = out["inserted"] + len(cols)
    return out


def _concat(parts: list[Columns]) -> Columns:
    if len(parts) == 1:
        return parts[0]
    def chain(field: str) -> list:
        return list(itertools.chain.from_iterable(getattr(p, field) for p in parts))

    return Columns(chain("pk"), chain("id"), np.concatenate([p.code for p in parts]),
                   chain("label"), chain("label_h"), chain("path"), chain("path_h"),
                   chain("metadata"), chain("meta_h"), chain("sizes"),
                   None if parts[0].place is None else np.concatenate([p.place for p in parts]),
                   None if parts[0].fine is None else np.concatenate([p.fine for p in parts]))


def _arrays(cols: Columns) -> dict[str, np.ndarray]:
    import orjson

    def text(values: list[str]) -> np.ndarray:
        return np.array(values, dtype=str) if values else np.zeros(0, "<U1")

    out = {"pk": text(cols.pk), "id": text(cols.id), "code": np.ascontiguousarray(cols.code),
           "label": text(cols.label), "label_h": text(cols.label_h), "path": text(cols.path),
           "path_h": text(cols.path_h),
           "metadata": text([orjson.dumps(m).decode() for m in cols.metadata]),
           "meta_h": text([orjson.dumps(m).decode() for m in cols.meta_h])}
    if cols.place is not None:
        out.update((f, np.ascontiguousarray(cols.place[:, j], dtype=np.float64))
                   for j, f in enumerate(PLACE_FIELDS))
    if cols.fine is not None:
        out["fine_hex"] = text(cols.fine_hex())
    return out


def _npy_bytes(cols: Columns) -> int:
    """The ``.npy`` bytes of a chunk (numpy strings: 4 bytes per character of the longest)."""
    width = max(map(len, cols.id)) + max(map(len, cols.label), default=1) \
        + max(map(len, cols.path), default=1) + 3 * 32 + 64 + 64
    return len(cols) * (4 * width + cols.code.shape[1])


def needs_insert(cols: Columns) -> list[int]:
    """Rows the numpy files cannot carry: Milvus' numpy import drops NUL characters from
    strings (measured on 2.3.5), so rows with a NUL in any text go through inserts instead."""
    import orjson

    return [i for i in range(len(cols))
            if "\x00" in cols.id[i] or "\x00" in cols.label[i] or "\x00" in cols.path[i]
            or (cols.metadata[i] and b"\\u0000" in orjson.dumps(cols.metadata[i]))]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

