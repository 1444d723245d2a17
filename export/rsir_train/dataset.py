"""The labelled archive training reads: the runtime's listing plus the checks training needs.

Why not a reader of its own: the images an archive holds, their ids and labels are listed by
:func:`rsir_sdk.archive.open_archive` (one extension list, one id rule) for indexing,
evaluation, calibration and training alike, so a split drawn here names the same ids that
``rsir index`` stores and ``rsir eval`` reads back. Training adds what only it needs:

- every image has a label (``root/<class>/<image>``: images at the top of the folder are
  refused; a CSV manifest needs a ``label`` column and no empty label);
- every class folder holds images (:class:`~rsir_train.errors.EmptyClassError`, or skipped
  and reported with ``allow_empty_classes``);
- a CSV manifest's files exist, and rows the lister refused (duplicate id, empty path) stop
  training rather than silently shrinking the archive;
- every image decodes (:func:`check_images`: :class:`~rsir_train.errors.CorruptImageError`, or
  left out and reported with ``skip_corrupt``).

What was left out is kept in :attr:`rsir_sdk.archive.ArchiveListing.invalid` as
:class:`~rsir_sdk.failures.Failure` records and written to the manifest (``training.skipped``).

>>> archive = check_images(open_training_archive("data/nwpu12"))       # doctest: +SKIP
>>> len(archive), archive.classes[:2], skipped(archive)                 # doctest: +SKIP
(2400, ['airplane', 'beach'], [])
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

from rsir_sdk.archive import ArchiveListing, Item, open_archive
from rsir_sdk.failures import Failure

from .errors import CorruptImageError, DataError, EmptyClassError, MissingLabelError

log = logging.getLogger(__name__)

__all__ = ["check_images", "open_training_archive", "skipped"]


def open_training_archive(
    source: str | os.PathLike,
    *,
    allow_empty_classes: bool = False,
    root: str | os.PathLike | None = None,
    path_column: str = "path",
    label_column: str = "label",
    id_column: str | None = None,
) -> ArchiveListing:
    """List a labelled archive: a folder ``root/<class>/<image>`` or a CSV manifest.

    Labels come from the first folder under the root (sub-folders of a class belong to it), or
    from the manifest's ``label_column``. Raises :class:`~rsir_sdk.errors.ArchiveError` (a
    missing archive or column) or one of :class:`~rsir_train.errors.DataError`'s subclasses.
    """
    p = Path(source)
    is_csv = p.suffix.lower() == ".csv" and not p.is_dir()
    if is_csv:
        listing = open_archive(p, root=root, path_column=path_column, label_column=label_column,
                               id_column=id_column)
    else:
        listing = open_archive(p, label_from="top")
    if listing.invalid:
        bad = "; ".join(f"{f.id}: {f.reason}" for f in listing.invalid[:5])
        raise DataError(
            f"{len(listing.invalid)} entr{'y' if len(listing.invalid) == 1 else 'ies'} of "
            f"{source} cannot be used for training: {bad}"
        )
    unlabelled = [it.path for it in listing.items if not it.label]
    if unlabelled:
        where = ("are at the top of the archive, not in a class folder "
                 f"(expected {p}/<class>/<image>)" if not is_csv else
                 f"have an empty '{label_column}' cell")
        raise MissingLabelError(
            f"{len(unlabelled)} image(s) {where}: {unlabelled[:5]}; training needs a label per image"
        )
    if is_csv:
        missing = [it.path for it in listing.items if not it.file.is_file()]
        if missing:
            raise DataError(f"{len(missing)} file(s) listed in {p} do not exist under "
                            f"{listing.root}: {missing[:5]}")
        return listing
    return _with_class_folders(listing, allow_empty_classes)


def _with_class_folders(listing: ArchiveListing, allow_empty: bool) -> ArchiveListing:
    """Check that every class folder holds images; skip (and report) empty ones when allowed."""
    root = listing.root
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise DataError(
            f"archive folder {root} has no class sub-folders (expected {root}/<class>/<image>)"
        )
    present = set(listing.classes)
    left_out: list[Failure] = []
    for name in folders:
        if name in present:
            continue
        if not allow_empty:
            raise EmptyClassError(
                f"class folder {root / name} holds no images: remove it or add images"
            )
        log.warning("skipping empty class folder %s", root / name)
        left_out.append(Failure(f"{name}/", str(root / name), "list", "empty class folder"))
    return ArchiveListing(root, listing.items, listing.kind, listing.ignored,
                          left_out, name=listing.name)


def check_images(
    archive: ArchiveListing,
    *,
    skip_corrupt: bool = False,
    indices: Iterable[int] | None = None,
) -> ArchiveListing:
    """Decode every image once; raise :class:`CorruptImageError` or drop and report the bad ones.

    Returns the archive (a new listing without the bad images when ``skip_corrupt``; they are
    added to its ``invalid`` records, stage ``read``, and logged).
    """
    from rsir_sdk.errors import ImageLoadError
    from rsir_sdk.images import load_image

    bad: list[tuple[Item, str]] = []
    positions = range(len(archive.items)) if indices is None else indices
    for i in positions:
        item = archive.items[i]
        try:
            load_image(item.file)
        except ImageLoadError as exc:
            bad.append((item, exc.reason))
    if not bad:
        return archive
    if not skip_corrupt:
        raise CorruptImageError([(it.path, why) for it, why in bad])
    for it, why in bad:
        log.warning("skipping unreadable image %s: %s", it.path, why)
    bad_ids = {it.id for it, _ in bad}
    kept = {it.label for it in archive.items if it.id not in bad_ids}
    gone = sorted({it.label for it, _ in bad} - kept - {""})  # "": an unlabelled archive
    if gone:  # refused like an empty class folder, not dropped without a word
        raise EmptyClassError(f"class {', '.join(gone[:5])}{' ...' if len(gone) > 5 else ''} "
                              f"has no readable image (every one was skipped): remove the class "
                              f"or replace its images")
    return ArchiveListing(
        archive.root, [it for it in archive.items if it.id not in bad_ids], archive.kind,
        archive.ignored, archive.invalid + [Failure(it.id, str(it.file), "read", why) for it, why in bad],
        name=archive.name,
    )


def skipped(archive: ArchiveListing) -> list[list[str]]:
    """What was left out of training, as the manifest records it: ``[[id, reason], ...]``."""
    return [[f.id, f.reason] for f in archive.invalid]
