"""The work behind :class:`~rsir_sdk.retriever.Retriever`'s writes: encode images (or take
codes made elsewhere, or a bundle's learned database codes) and write them, index archives.

Functions of the Retriever, as :mod:`rsir_sdk.fine_codes` holds its fine-code side: the class
stays one class with thin write methods (no mixin), and :mod:`rsir_sdk.retriever` stays short.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .archive import ArchiveListing, open_archive
from .call_checks import images_with_ids
from .failures import FailureReport
from .georef import with_georefs
from .images import ImageSource
from .ingest import PREPARE_MIN_ROWS, IngestProgress, IngestSummary, ingest
from .options import IngestOptions
from .store import MilvusCodeStore, PrepareProgress
from .store import place as store_place
from .store import values as store_values
from .store.rows import is_utf8

if TYPE_CHECKING:  # pragma: no cover
    from .retriever import Retriever

log = logging.getLogger("rsir_sdk.retriever")


def add_images(r: "Retriever", images: Sequence[ImageSource], ids: Sequence[str] | None,
               labels: Sequence[str] | None, metadata: Sequence[Mapping[str, Any] | None] | None,
               paths: Sequence[str] | None, batch_size: int | None,
               place: tuple[Sequence[Any] | None, Sequence[Any] | None]) -> int:
    """:meth:`Retriever.add_images`: every value checked before any image is decoded, then
    both codes of every image from one forward pass, then one upsert."""
    footprints, times = place
    images, ids, paths = images_with_ids(images, ids, paths)
    r._fine.check_writes()
    store_values.labels(labels, len(ids))  # bad values fail before any image is decoded
    store_values.paths(paths, len(ids))
    store_values.metadata(metadata, ids)
    check_place(r.store, ids, footprints, times)
    codes, fine, georefs = r.encoder.encode_for_writes(images, batch_size, r._fine.ranking)
    metadata = with_georefs(metadata, georefs)  # a GeoTIFF's place, as rsir index keeps it
    return r.store.upsert(ids, codes, labels, paths, metadata, encoder=r.bundle.identity(),
                          footprints=footprints, times=times, fine=fine)


def check_place(store: MilvusCodeStore, ids: Sequence[str], footprints: Any, times: Any) -> None:
    """Refuse bad footprints or times (one line naming the item) before any work."""
    if footprints is None and times is None:
        return
    if not store.has_place:
        raise store_place.refuse_old(store.collection, store.display_uri,
                                     "store footprints or times")
    store_place.columns(list(ids), [None] * len(ids), footprints, times)


def add_learned_codes(r: "Retriever") -> int:
    """:meth:`Retriever.add_learned_codes`."""
    db = r.bundle.load_database()
    root = r.bundle.archive_root
    paths = list(db.paths)
    if root and Path(root).is_dir():
        paths = [str(Path(root, p)) if p and not os.path.isabs(p) else p for p in paths]
    fine = db.fine if r.fine_ranking else None
    if r.fine_ranking and fine is None:
        fine = r._fine.of_database(paths)
    meta = [{"source": "learned"}] * len(db)
    n = r.add_codes(db.codes, db.ids, db.labels, paths, meta, fine=fine)
    if n >= PREPARE_MIN_ROWS:
        r.store.prepare_for_search()
    elif n:
        r.store.flush()  # durable on a server, as rsir index leaves its rows
    return n


def index(r: "Retriever", archive: str | os.PathLike | ArchiveListing, opts: IngestOptions,
          report: str | os.PathLike | FailureReport | None,
          progress: Callable[[IngestProgress], None] | None,
          on_prepare: Callable[[PrepareProgress], None] | None) -> IngestSummary:
    """:meth:`Retriever.index` with its options built: list, run on the chosen engine, and
    keep the earlier failure report when this run was cut short or had nothing to do."""
    r._fine.check_writes()
    listing = archive if isinstance(archive, ArchiveListing) else open_archive(
        archive, **opts.listing())
    _say_unknown_labels(r, listing, opts.label_from)
    own = None if report is None or isinstance(report, FailureReport) else FailureReport(report)
    rep = own or (report if isinstance(report, FailureReport) else None)
    run = ingest
    if opts.engine == "ray":  # imported here: Ray is an optional extra
        from .ray_ingest import ingest_on_ray

        run = ingest_on_ray
    summary = None
    try:
        summary = run(r.encoder, r.store, listing, opts, report=rep, progress=progress,
                      on_prepare=on_prepare)
        _account_unlisted(r.store, listing, opts, summary)
        return summary
    finally:
        if own is not None:
            own.close(keep_earlier=summary is None or summary.total == 0)


def _account_unlisted(store: MilvusCodeStore, listing: ArchiveListing, opts: IngestOptions,
                      summary: IngestSummary) -> None:
    """Items the collection holds that the listing does not: deleted (``opts.prune``), or
    counted in ``summary.not_listed``. Why: a file removed or renamed since it was indexed kept
    coming back in searches (a renamed one twice, and as a duplicate of itself) without a
    word. The count costs one count and one lookup of the failed ids; pruning reads every id."""
    if opts.only_ids is not None or summary.total == 0:
        return  # a run of some ids says nothing about the rest
    if opts.prune:
        listed = {item.id for item in listing.items}
        gone = [i for i in store.iter_ids() if i not in listed]
        for start in range(0, len(gone), 1000):
            summary.pruned += store.delete(gone[start:start + 1000])
        if gone:
            store.flush()
        return
    # items that failed to read may be held from before (--force); a listing failure (a
    # repeated id, whose first item was indexed; a name that is not text) is no such item
    held_before = sorted({f.id for f in summary.failed
                          if f.stage != "list" and f.id and is_utf8(f.id)})
    failed_held = len(store.existing_ids(held_before)) if held_before else 0
    summary.not_listed = max(0, store.count() - summary.indexed - summary.skipped - failed_held)


def _say_unknown_labels(r: "Retriever", listing: ArchiveListing, label_from: str) -> None:
    """One warning when items get labels the bundle's classes do not hold: with ``--label-from
    parent`` a nested folder (``lake/2019 survey/x.jpg``) labelled the item ``2019 survey``
    without a word, and a label filter or ``rsir eval`` then missed it."""
    classes = set(r.bundle.classes)
    if not classes or label_from == "none":
        return
    unknown = sorted({it.label for it in listing.items if it.label} - classes)
    if not unknown:
        return
    # the hint only where it changes something: an item under a nested folder (for a flat
    # folder per class, top and parent are the same folder, and the classes simply differ)
    unknown_set = set(unknown)
    nested = label_from == "parent" and any(
        it.label in unknown_set and it.path.replace("\\", "/").count("/") > 1
        for it in listing.items)
    hint = "; --label-from top labels by the archive's top folder, as training does" \
        if nested else " (an archive of other classes than the bundle was trained on?)"
    log.warning("%d label(s) the bundle's %d classes do not hold, e.g. %s%s", len(unknown),
                len(classes), ", ".join(repr(u) for u in unknown[:3]), hint)
