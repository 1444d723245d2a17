"""The codes an evaluation ranks, made once: the query and database codes of a bundle's split.

:func:`evaluation_codes` reads the bundle's ``split.json`` (train = retrieval database, query),
lists the archive the split belongs to, takes the bundle's learned database codes as they are
(AHCL) or encodes the database images (MiLAN, ITQ), and encodes the query images, each image
once, with the same pipeline as ``rsir index``. What comes back, :class:`EvalCodes`, is what
Milvus, the in-memory metrics and the plots all rank (:mod:`rsir_sdk.evaluate`,
:mod:`rsir_sdk.plots`), so that every figure of one evaluation comes from one set of codes.
Split out of :mod:`rsir_sdk.evaluate`, which re-exports these names.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .archive import ArchiveListing, Item, open_archive
from .bundle import Bundle
from .encode_pipeline import iter_codes
from .encoder import Encoder
from .errors import EvaluationError, SplitError
from .failures import Failure
from .images import RuleLike
from .splits import SPLIT_FILE

# the logger these functions had in rsir_sdk.evaluate: a user's logging settings keep applying
log = logging.getLogger("rsir_sdk.evaluate")

__all__ = ["DATABASES", "EvalCodes", "EvalOptions", "Progress", "evaluation_codes"]

DATABASES = ("auto", "train", "query")

#: ``progress(stage, done, total)``; stages ``"database"``, ``"queries"``, ``"search"``
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EvalOptions:
    """How an evaluation's codes are made (one value, passed whole from the CLI or a trainer).

    ``database``: ``"auto"`` (by the bundle's protocol), ``"train"`` (AHCL: the queries against
    the train split) or ``"query"`` (MiLAN: the query split leave-one-out). ``rule``: the raster
    rule for TIFF archives. ``workers``, ``batch_size``: decoding threads and encoder batch.
    """

    database: str = "auto"
    rule: RuleLike = None
    workers: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.database not in DATABASES:
            raise EvaluationError(
                f"database must be 'auto', 'train' or 'query', got {self.database!r}")



@dataclass(frozen=True)
class EvalCodes:
    """One evaluation's codes, computed once: what Milvus, the metrics and the plots rank.

    The database is in the order the bundle (learned codes) or the split (encoded) lists it;
    the metrics rank its ties in the store's order themselves (:meth:`metric_args` passes
    ``db_ids``). With ``leave_one_out`` the queries *are* the database (same arrays).
    """

    bundle: Bundle
    protocol: str
    leave_one_out: bool
    database: str  # "learned" | "encoded"
    db_ids: list[str]
    db_labels: list
    db_codes: np.ndarray
    q_ids: list[str]
    q_labels: list
    q_codes: np.ndarray
    failed: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    #: the fine codes of the database and the queries (a bundle with a fine code), else None
    db_fine: np.ndarray | None = None
    q_fine: np.ndarray | None = None

    @property
    def n_ranked(self) -> int:
        """Length of each query's whole ranking (the database, less the query itself in
        leave-one-out)."""
        return len(self.db_ids) - (1 if self.leave_one_out else 0)

    @property
    def query_indices(self) -> np.ndarray | None:
        """Leave-one-out: the database index of each query (they are the database), else None."""
        return np.arange(len(self.db_ids)) if self.leave_one_out else None

    def metric_args(self) -> dict[str, Any]:
        """Keyword arguments of :mod:`rsir_sdk.metrics` for these codes: leave-one-out and the
        database ids (ties ranked in the store's order) and, with fine codes, both sides' fine
        codes (ties ranked by them first, as the store does)."""
        out: dict[str, Any] = {"db_ids": self.db_ids}
        if self.q_fine is not None and self.db_fine is not None:
            test = self.bundle.scene_test
            out["fine"] = ((self.q_fine, self.db_fine) if test is None
                           else (self.q_fine, self.db_fine, test))
        if self.leave_one_out:
            out.update(exclude_self=True, query_indices=self.query_indices)
        return out



def evaluation_codes(
    bundle: Bundle | str | os.PathLike,
    data: str | os.PathLike | None = None,
    options: EvalOptions | None = None,
    *,
    encoder: Encoder | None = None,
    progress: Progress | None = None,
) -> EvalCodes:
    """The query and database codes of the bundle's split (each image encoded once).

    Arguments as in :func:`evaluate_bundle`. Raises :class:`EvaluationError` when the split or
    the archive is missing, or when no query or database item is left.
    """
    t0 = time.perf_counter()
    opts = options or EvalOptions()
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    try:
        sp = b.split()
    except SplitError as exc:
        raise EvaluationError(str(exc)) from None
    if not sp.query_ids:  # said before encoding, not as "every query failed to load"
        raise EvaluationError(f"bundle {b.path} has no query side to evaluate (trained "
                              f"without labels: its split lists no queries)")
    protocol = str((b.manifest.get("training") or {}).get("protocol") or sp.protocol)
    side = opts.database
    if side == "auto":
        side = "query" if protocol.lower().startswith("milan") else "train"
    enc = encoder or Encoder(b, raster_rule=opts.rule, batch_size=opts.batch_size or 32)
    failed: list[Failure] = []
    listing = _archive(b, data)
    by_id = listing.by_id()

    def encode(ids: list[str], stage: str) -> tuple[list[Item], np.ndarray, np.ndarray | None]:
        items = _items_for(b, listing.root, by_id, ids, stage)
        return _encode(enc, items, opts, failed.append, stage_reporter(progress, stage))

    if side == "train" and b.has_database:
        db = b.load_database()
        db_ids, db_labels, db_codes, kind = list(db.ids), list(db.labels), db.codes, "learned"
        if set(db_ids) != set(sp.train_ids):
            log.warning("the bundle's database ids differ from the train split of %s", SPLIT_FILE)
        db_fine = db.fine if db.fine is not None or enc.fine_bits is None else _learned_fine(
            encode, db_ids)
    else:
        items, db_codes, db_fine = encode(
            sp.query_ids if side == "query" else sp.train_ids, "database")
        db_ids, db_labels, kind = [it.id for it in items], [it.label for it in items], "encoded"
    if not db_ids:
        raise EvaluationError("the database is empty (every database image failed to load)")
    if side == "query":  # leave-one-out: the queries are the database
        q_ids, q_labels, q_codes, q_fine = db_ids, db_labels, db_codes, db_fine
    else:
        q_items, q_codes, q_fine = encode(sp.query_ids, "queries")
        q_ids, q_labels = [it.id for it in q_items], [it.label for it in q_items]
    if not q_ids:
        raise EvaluationError("no query could be encoded (every query image failed to load)")
    if db_fine is None or q_fine is None:
        db_fine = q_fine = None
    return EvalCodes(b, protocol, side == "query", kind, db_ids, db_labels, db_codes, q_ids,
                     q_labels, q_codes, failed, time.perf_counter() - t0, db_fine, q_fine)


def _learned_fine(encode: Callable[[list[str], str], tuple[list[Item], np.ndarray,
                                                           np.ndarray | None]],
                  db_ids: list[str]) -> np.ndarray | None:
    """Fine codes of a learned database whose bundle predates them (database.npz without
    ``fine``): its images encoded from the archive; None (evaluated without fine codes) when
    some cannot be read."""
    items, _, fine = encode(db_ids, "database")
    if len(items) != len(db_ids):
        log.warning("%d database image(s) could not be read: evaluating without fine codes",
                    len(db_ids) - len(items))
        return None
    return fine


def _archive(b: Bundle, data: str | os.PathLike | None) -> ArchiveListing:
    """The listing of the archive the split belongs to."""
    root = data if data is not None else b.archive_source
    if root is None:
        raise EvaluationError(
            f"bundle {b.path} does not record its archive: give the archive folder (or CSV "
            f"manifest) the split belongs to with data= (--data DIR)"
        )
    if not Path(root).exists():
        raise EvaluationError(f"archive {root} does not exist (give --data DIR)")
    return open_archive(root, label_from="top")


def _items_for(b: Bundle, root: Any, by_id: dict[str, Item], ids: Sequence[str],
               what: str) -> list[Item]:
    """The archive items of the split's ``ids``; an id the archive (at ``root``) lacks raises."""
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise EvaluationError(
            f"{len(missing)} {what} id(s) of {b.path / SPLIT_FILE} are not in the archive "
            f"{root} (e.g. {missing[:3]}): is --data the archive the bundle was trained on?"
        )
    return [by_id[i] for i in ids]


def stage_reporter(progress: Progress | None, stage: str) -> Callable[[int, int], None]:
    """``progress`` bound to one stage (a no-op without one)."""
    return (lambda done, total: progress(stage, done, total)) if progress else (lambda d, t: None)


def _encode(enc: Encoder, items: list[Item], opts: EvalOptions,
            on_failure: Callable[[Failure], None],
            report: Callable[[int, int], None]) -> tuple[list[Item], np.ndarray, np.ndarray | None]:
    """Codes (and, for a bundle with a fine code, fine codes: the same forward pass) of the
    ``items`` that could be read, in order; the others go to ``on_failure``."""
    kept: list[Item] = []
    parts, fines = [], []
    fine = enc.fine_bits is not None
    for batch in iter_codes(enc, items, workers=opts.workers, batch_size=opts.batch_size,
                            on_failure=on_failure, fine=fine):
        kept += batch.items
        parts.append(batch.codes)
        if batch.fine is not None:
            fines.append(batch.fine)
        report(len(kept), len(items))
    codes = np.concatenate(parts) if parts else np.zeros((0, enc.bits // 8), np.uint8)
    if not fine:
        return kept, codes, None
    assert enc.fine_bits is not None
    return kept, codes, (np.concatenate(fines) if fines
                         else np.zeros((0, enc.fine_bits // 8), np.uint8))
