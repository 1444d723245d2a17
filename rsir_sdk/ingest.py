"""Archive ingestion: the images of an archive → binary codes in a Milvus collection.

Why: users arrive with an archive on disk (thousands to millions of files) and want it
searchable with one command that is safe to interrupt. :func:`ingest` (behind
:meth:`rsir_sdk.Retriever.index` and ``rsir index``) skips the ids the collection already holds,
decodes images in a small thread pool while the encoder runs (so the encoder is never waiting on
JPEG decoding), encodes in batches and writes in batches. Every image that cannot be indexed is
reported (:class:`~rsir_sdk.failures.Failure`, and a CSV report file through
:class:`~rsir_sdk.failures.FailureReport`), never silently dropped.

**Resuming.** An id that the collection holds is *already present* and is skipped. This is
safe after a ``kill -9`` at any moment because (1) a Milvus row is written whole or not at all,
(2) rows are written only after their image was decoded and encoded, (3) every id written was
checked absent by this run just before (the listing's ids are unique), so the writes are plain
inserts (half the server's work of an upsert), and the next run checks again, per id, and (4)
the collection refuses codes from any other encoder or raster rule (:class:`~rsir_sdk.Retriever`).
A write batch cut off part-way leaves some of its ids present and some not; the re-run encodes
exactly the missing ones. An insert request that fails is written again as an upsert, which
replaces whatever part of it had arrived. Images whose *files changed* since they were indexed
keep their old codes: pass ``skip_existing=False`` (``rsir index --force``) to re-encode
everything (written as upserts). One run writes to a collection at a time.

**Bulk load** (``bulk_dir``; a Milvus server): rows go to numpy chunk files imported by Milvus'
bulk import instead, with a journal that makes every chunk count once across crashes
(:mod:`rsir_sdk.store.bulk`). **Ready to search**: at the end a server collection is flushed,
indexed and served (:meth:`~rsir_sdk.store.MilvusCodeStore.prepare_for_search`) when the run
wrote at least :data:`PREPARE_MIN_ROWS` rows, or always with ``prepare="always"``.

**Fine codes** (issue 20): when the bundle has a fine code and the collection keeps them
(:func:`writes_fine`), every batch is encoded with both codes in one session run and every
write (insert, upsert, bulk load; Ray alike) carries the fine codes beside the codes. An old
collection that keeps none is filled with the retrieval codes alone, as before.

**Place and period**: an image's georeferencing (a GeoTIFF's ``lonlat_bounds``, ``lonlat`` and
``time``) and a manifest's place columns reach its metadata, from which every write fills the
collection's place fields (:mod:`rsir_sdk.store.place`), alike on both engines and a bulk load.

>>> from rsir_sdk import Retriever
>>> r = Retriever("bundle/", uri="./rsir.db", collection="scenes")          # doctest: +SKIP
>>> summary = r.index("archive/", label_from="parent")                      # doctest: +SKIP
>>> summary.indexed, summary.skipped, len(summary.failed)                  # doctest: +SKIP
(2500, 0, 3)
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .archive import ArchiveListing, Item
from .encode_pipeline import EncodedBatch as EncodedBatch  # re-exported: defined here before
from .encode_pipeline import default_workers as default_workers
from .encode_pipeline import iter_codes
from .encoder import Encoder
from .errors import StoreError
from .failures import Failure, FailureReport, as_reported
from .ingest_report import IngestInterrupted, IngestProgress, IngestSummary
from .options import IngestOptions
from .store import MilvusCodeStore, PrepareProgress, rows
from .store import reads as store_reads
from .store.bulk import BulkLoad
from .store.lease import WriterLease

log = logging.getLogger(__name__)

EXISTS_CHUNK = 1000
#: images of a run checked for copies under other ids before the check stops (unless found)
ELSEWHERE_CHECKED = 10_000
#: ``prepare="auto"`` prepares a server collection for search after a run that wrote this many
#: rows (a few thousand rows in growing segments cost little to search; a million cost 55 s)
PREPARE_MIN_ROWS = 10_000
#: a bulk load's chunk is imported after this many seconds even when it holds fewer than a
#: million rows, so that a crash loses at most this much encoding work
BULK_MAX_AGE = 600.0


def writes_fine(encoder: Encoder, store: MilvusCodeStore) -> bool:
    """Whether writes to ``store`` carry fine codes: the bundle has a fine code and the
    collection keeps (or, new, will keep) them. An old collection that keeps none is filled
    with the retrieval codes alone, as before (rebuild it to rank by appearance)."""
    return encoder.fine_bits is not None and store.fine_bits is not None


class IngestRun:
    """The bookkeeping every ingestion engine shares: which images to do, what became of each,
    and the writes.

    It lists what is left to do (:meth:`unseen`: ids the collection holds are skipped), takes
    encoded images (:meth:`add`: each checked alone, a value the store refuses fails that image
    with stage ``write``), writes them in batches (:meth:`flush`: rows only after their image
    was encoded; inserts of ids just checked absent, or a bulk load; a crash at any moment
    loses nothing a re-run does not redo), prepares the collection for search
    (:meth:`finish`), and keeps the :class:`IngestSummary`, the :class:`IngestProgress` and the
    report. :func:`ingest` drives it with a local thread pool, :mod:`rsir_sdk.ray_ingest` with
    Ray.
    """

    def __init__(self, store: MilvusCodeStore, identity: Mapping[str, Any],
                 archive: ArchiveListing, options: IngestOptions | None = None, *,
                 report: FailureReport | None = None,
                 progress: Callable[[IngestProgress], None] | None = None,
                 on_prepare: Callable[[PrepareProgress], None] | None = None):
        self.t0 = time.perf_counter()
        opts = options if options is not None else IngestOptions()
        self.options = opts
        self.prepare, self.on_prepare = opts.prepare, on_prepare
        self.store, self.identity = store, dict(identity)
        self.skip_existing, self.relative_paths = opts.skip_existing, opts.relative_paths
        self.upsert_batch, self.flush_seconds = opts.upsert_batch, opts.flush_seconds
        self.report, self.progress = report, progress
        only_ids, bulk_dir = opts.only_ids, opts.bulk_dir
        items, invalid = archive.items, archive.invalid
        if only_ids is not None:
            wanted = set(only_ids)  # ids as given, or as a failure report wrote them
            items = [it for it in items if it.id in wanted or as_reported(it.id) in wanted]
            invalid = [f for f in invalid if f.id in wanted or as_reported(f.id) in wanted]
        self.items = items
        self.summary = IngestSummary(
            total=len(items) + len(invalid), ignored=len(archive.ignored),
            ignored_examples=archive.ignored[:5], report=str(report.path) if report else None,
            collection=store.collection, uri=store.display_uri)
        self.state = IngestProgress(total=self.summary.total)
        # encoded rows waiting for the next write, one tuple per batch (a single append each,
        # so Ctrl-C never leaves a half-added batch): ids, codes, labels, paths, metadata and
        # the fine codes (None when the collection keeps none)
        self.pending: list[tuple[list[str], np.ndarray, list[str], list[str], list[dict],
                                 np.ndarray | None]] = []
        self.last_flush = time.monotonic()
        #: the last write was cut short: the next one upserts (see :meth:`flush`)
        self.in_doubt = False
        self._elsewhere_checked = 0  # images checked for copies under other ids
        self.bulk: BulkLoad | None = None
        #: a server collection's writer lease, held from before the first id is checked
        #: (:mod:`rsir_sdk.store.lease`; a Lite file admits one process anyway)
        self.lease: WriterLease | None = None
        for f in invalid:
            self.fail(f)
        self.tick()
        #: this run made the (server) collection: one it leaves empty is dropped at the end
        self.created_here = False
        if not store.is_lite and items:
            # the lease lives in the collection's properties
            self.created_here = store.writer.ensure_created()
            self.lease = WriterLease(store).take()
        try:  # from here on a failure releases the lease (no engine's finally covers __init__)
            if bulk_dir is not None and not store.is_lite:
                # an earlier run's chunks are resolved (imported, visible) before any id is
                # checked; a chunk every million rows or ten minutes: a crash loses at most
                # that much encoding
                self.bulk = BulkLoad(store, bulk_dir, progress=on_prepare, max_age=BULK_MAX_AGE)
                self.bulk.resume()
            elif bulk_dir is not None:
                log.info("Milvus Lite has no bulk import: writing with inserts")
        except BaseException:
            self.close()
            raise

    def fail(self, f: Failure) -> None:
        """Record an image that was not indexed (and write it to the report)."""
        self.summary.failed.append(f)
        self.state.failed += 1
        if self.report is not None:
            self.report.add(f)
        log.info("not indexed: %s: %s: %s", f.path, f.stage, f.reason)
        self.tick()  # the last progress line must count it (a run ending in failures did not)

    def stored_path(self, item: Item) -> str:
        """The path an item is stored with: relative to its archive, or absolute."""
        # normalised: "../arch/x.jpg" was kept as "/cwd/../arch/x.jpg" in every hit and report
        return item.path if self.relative_paths else os.path.abspath(item.file)

    def tick(self) -> None:
        """Tell the progress callback where things stand."""
        if self.progress is not None:
            self.progress(self.state)

    def unseen(self) -> Iterator[Item]:
        """The items to do: all of them, less the ids the collection holds (when resuming)."""
        for start in range(0, len(self.items), EXISTS_CHUNK):
            chunk = self.items[start : start + EXISTS_CHUNK]
            present = (self.store.existing_ids([it.id for it in chunk])
                       if self.skip_existing else set())
            if present:
                self.state.skipped += len(present)
                self.summary.skipped += len(present)
                self.tick()
            todo = [it for it in chunk if it.id not in present]
            self._note_stored_elsewhere(todo)
            yield from todo

    def _note_stored_elsewhere(self, items: Sequence[Item]) -> None:
        """Count images about to be written that the collection already holds under another
        id (the same file: a folder indexed again from its parent or a sub-folder). They are
        indexed as asked; the summary says so, since each would come back twice in searches.
        One query per chunk, on the first :data:`ELSEWHERE_CHECKED` images of a run and, once
        one is found, on all: a clean run of millions pays a few queries, not thousands."""
        if self.relative_paths or not items or not self.store.exists:
            return  # relative paths say nothing about the file
        if self._elsewhere_checked >= ELSEWHERE_CHECKED and not self.summary.stored_elsewhere:
            return
        self._elsewhere_checked += len(items)
        paths = {self.stored_path(it): it.id for it in items}
        for path, stored_id in self.store.ids_by_path(paths).items():
            if stored_id != paths[path]:
                self.summary.stored_elsewhere += 1
                if len(self.summary.stored_elsewhere_examples) < 3:
                    self.summary.stored_elsewhere_examples.append((paths[path], stored_id))

    def add(self, items: Sequence[Item], codes: np.ndarray, georefs: Sequence[Mapping[str, Any]],
            fine: np.ndarray | None = None) -> None:
        """Queue encoded images for writing (and write when a batch is full or old enough);
        ``fine``: their fine codes from the same forward pass, written beside the codes."""
        paths = [self.stored_path(it) for it in items]
        metas = [{**geo, **it.metadata} if geo else dict(it.metadata)
                 for it, geo in zip(items, georefs)]
        keep = []
        for i, it in enumerate(items):  # a value the store refuses fails that image alone
            why = rows.problem(it.id, it.label, paths[i], metas[i])
            if why is None:
                keep.append(i)
            else:
                self.fail(Failure(it.id, str(it.file), "write", why))
        if keep:
            self.pending.append((
                [items[i].id for i in keep], np.asarray(codes)[keep],
                [items[i].label for i in keep], [paths[i] for i in keep],
                [metas[i] for i in keep], None if fine is None else np.asarray(fine)[keep],
            ))
        self.state.encoded += len(keep)
        self.tick()
        waiting = sum(len(p[0]) for p in self.pending)
        if waiting >= self.upsert_batch or time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write every queued row; a Milvus failure says how much was indexed before it."""
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        if self.lease is not None:
            self.lease.check()
        pending = self.pending
        ids = [i for p in pending for i in p[0]]
        args = (ids, np.concatenate([p[1] for p in pending]), [x for p in pending for x in p[2]],
                [x for p in pending for x in p[3]], [x for p in pending for x in p[4]])
        fine = (None if any(p[5] is None for p in pending)
                else np.concatenate([p[5] for p in pending]))
        # a write cut short (Ctrl-C, a Milvus error) may have reached Milvus in part: the rows are
        # "in doubt" and are never inserted again (that would store ids twice)
        in_doubt, self.in_doubt = self.in_doubt, True
        try:
            if self.bulk is not None and in_doubt:
                # part of them may sit in a submitted chunk: leave them to the re-run, which
                # resolves every chunk before it checks ids
                log.info("%d rows of an interrupted bulk write are left to the re-run", len(ids))
                pending.clear()
                self.state.encoded -= len(ids)
                self.in_doubt = False
                return
            if self.bulk is not None and not self.store.repairing:
                self.bulk.add_rows(*args, encoder=self.identity, fine=fine)
            elif self.skip_existing and not in_doubt and not self.store.repairing:
                # every id was checked absent: inserts (while repairing items that lost their
                # fine-code row, "absent" ids may hold a main row: upserts, below)
                self.store.insert(*args, encoder=self.identity, batch_size=self.upsert_batch,
                                  fine=fine)
            else:  # upserts replace whatever part of an interrupted write reached Milvus
                self.store.upsert(*args, encoder=self.identity, batch_size=self.upsert_batch,
                                  fine=fine)
        except StoreError as exc:
            done = self.summary.indexed
            raise StoreError(
                f"{exc} ({done} images were indexed before this; re-run the same command to "
                f"resume)" if done else f"{exc} (nothing was indexed; run the command again "
                f"once that is fixed)"
            ) from exc
        pending.clear()
        self.in_doubt = False
        self.summary.indexed += len(ids)
        for meta in args[4]:
            for key, counts in (("footprint_error", self.summary.footprint_errors),
                                ("time_error", self.summary.time_errors)):
                if key in meta:
                    why = str(meta[key])
                    counts[why] = counts.get(why, 0) + 1
        self.state.indexed = self.summary.indexed
        self.tick()

    def finish(self) -> IngestSummary:
        """Write what is queued, finish a bulk load, prepare the collection for search, and
        return the summary."""
        self.flush()
        if self.bulk is not None:
            self.summary.bulk = self.bulk.finish()
        wrote = self.summary.indexed
        if self.prepare == "always" or (self.prepare == "auto" and (
                self.bulk is not None or wrote >= PREPARE_MIN_ROWS)):
            self.summary.prepare = self.store.prepare_for_search(progress=self.on_prepare)
        elif wrote:
            self._flush_store()
        self.store._fine_gap = None  # repaired or not, the next run counts again
        self.summary.seconds = time.perf_counter() - self.t0
        return self.summary

    def _flush_store(self) -> None:
        """Make the written rows durable (a server restart lost unflushed rows); a failure
        says what was indexed, as a failed write does."""
        try:
            self.store.flush()
        except StoreError as exc:
            raise StoreError(f"{exc} ({self.summary.indexed} images were written but may not "
                             f"be durable: re-run the same command, or flush later with "
                             f"prepare_for_search)") from exc

    def close(self) -> None:
        """Release the server collection's writer lease (every engine calls it at the end,
        whatever the outcome)."""
        lease, self.lease = self.lease, None
        if self.created_here and not self.summary.indexed:
            self._drop_if_empty()  # made for the lease, nothing written: leave nothing behind
        if lease is not None:
            lease.release()

    def _drop_if_empty(self) -> None:
        try:
            # fine-code rows: another writer's first half of a write (they go first)
            if self.store.count() == 0 and store_reads.fine_rows(self.store) == 0:
                self.store.drop()
                log.info("dropped collection %s: this run created it and wrote nothing",
                         self.store.collection)
        except StoreError as exc:  # the run's own outcome is the one to report
            log.info("could not drop the empty collection %s: %s", self.store.collection, exc)

    def interrupted(self) -> IngestInterrupted:
        """Ctrl-C: write what was encoded (the re-run starts after it), return the exception.
        A bulk load's last chunk is submitted without waiting (the re-run resolves it)."""
        self.flush()
        if self.bulk is not None:
            self.bulk.stop()
        elif self.summary.indexed:
            try:  # best effort: what was written stays durable (Ctrl-C again stops this)
                self.store.flush()
            except StoreError as exc:
                log.info("could not flush %s after the interrupt: %s", self.store.collection, exc)
        self.summary.seconds = time.perf_counter() - self.t0
        return IngestInterrupted(self.summary)


def ingest(
    encoder: Encoder,
    store: MilvusCodeStore,
    archive: ArchiveListing,
    options: IngestOptions | None = None,
    *,
    report: FailureReport | None = None,
    progress: Callable[[IngestProgress], None] | None = None,
    on_prepare: Callable[[PrepareProgress], None] | None = None,
) -> IngestSummary:
    """Encode every image of ``archive`` not yet in ``store`` and write its code; resumable.

    Args:
        encoder: the bundle's :class:`~rsir_sdk.Encoder`, with the collection's raster rule.
        store: the collection, already checked against the encoder (the Retriever does that).
        archive: from :func:`rsir_sdk.archive.open_archive`.
        options: an :class:`~rsir_sdk.options.IngestOptions` (default: the defaults); this
            engine reads ``skip_existing``, ``only_ids``, ``relative_paths``, ``workers`` and
            ``batch_size`` (decoding threads, encoder batch), ``upsert_batch`` and
            ``flush_seconds`` (rows per write; pending rows are also written after this many
            seconds, so little work is lost to a crash), ``max_pixels``, ``bulk_dir`` (load
            through Milvus' bulk import, staging files in a folder the server reads at the same
            path; Milvus Lite inserts) and ``prepare`` (``auto``: after
            :data:`PREPARE_MIN_ROWS` rows or a bulk load; ``always``; ``never``).
        report: failures are also written here as they happen.
        progress: called with an :class:`IngestProgress` as work advances.
        on_prepare: called with :class:`~rsir_sdk.store.PrepareProgress` while preparing.

    Returns an :class:`IngestSummary`. Raises :class:`~rsir_sdk.errors.StoreError` when Milvus
    fails (re-run to resume) and :class:`IngestInterrupted` on Ctrl-C after writing what was
    encoded.
    """
    opts = options if options is not None else IngestOptions()
    run = IngestRun(store, encoder.bundle.identity(), archive, opts, report=report,
                    progress=progress, on_prepare=on_prepare)
    stream = iter_codes(encoder, run.unseen(), workers=opts.workers, batch_size=opts.batch_size,
                        max_pixels=opts.max_pixels, on_failure=run.fail,
                        fine=writes_fine(encoder, store))
    try:
        for batch in stream:
            run.add(batch.items, batch.codes, batch.georefs, batch.fine)
        return run.finish()
    except KeyboardInterrupt:
        stream.close()
        raise run.interrupted() from None
    finally:
        stream.close()
        run.close()
