"""Evaluate a bundle the way it is deployed: its query split searched THROUGH MILVUS.

Why: training reports mAP computed in memory. What users get is a Milvus search over codes
stored in a ``BINARY_VECTOR`` collection, queried with codes from the ONNX encoder run by
onnxruntime on images decoded by the SDK. :func:`evaluate_bundle` measures that path:

1. reads the bundle's ``split.json`` (train = retrieval database, query) and lists the archive
   the split belongs to (``data``: a folder with one sub-folder per class, or a CSV manifest);
2. puts the database into a Milvus collection: the bundle's learned codes as they are (AHCL),
   or, for symmetric bundles (MiLAN), the database images encoded by the encoder;
3. encodes the query images (same pipeline as ``rsir index``) and searches the collection for
   the top ``k`` = database size (capped at Milvus' 16384);
4. computes mAP over the whole database, mAP@k and precision@k **from Milvus' ranking**, and
   the same numbers with :mod:`rsir_sdk.metrics` on the codes in memory (``reference``);
   ``agree`` says whether Milvus ranked every query exactly as the reference did.

Ranking and ties: the store orders hits by (distance, digest of the id)
(:mod:`rsir_sdk.store.topk`); the database is put in that order (:func:`~rsir_sdk.store.tie_order`)
before :mod:`rsir_sdk.metrics` sees it, whose ties go by database index, so both rankings use
the same tie rule and agree exactly when Milvus returns the whole database.

Protocols: ``database="train"`` (AHCL: queries against the train split) or ``"query"`` (MiLAN:
the query split is both queries and archive, leave-one-out); ``"auto"`` picks ``"query"`` when
the bundle's protocol starts with ``milan``. Only numpy, onnxruntime and pymilvus are used, so
the training side can call this too.

>>> from rsir_sdk.evaluate import evaluate_bundle
>>> res = evaluate_bundle("bundle/", data="/data/nwpu12")        # doctest: +SKIP
>>> res.metrics["mAP"], res.metrics["P@10"], res.agree          # doctest: +SKIP
(0.9312, 0.9451, True)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import metrics
from .archive import Item, open_archive
from .bundle import Bundle
from .encoder import Encoder
from .errors import EvaluationError, SplitError
from .failures import Failure
from .images import RuleLike
from .ingest import iter_codes
from .splits import SPLIT_FILE
from .store import MAX_TOPK, MilvusCodeStore, tie_order

log = logging.getLogger(__name__)

DEFAULT_KS = (10, 20, 100)
#: (queries x k) hits fetched per Milvus search call, to keep each answer small
HITS_PER_CALL = 200_000


@dataclass
class EvalResult:
    """Retrieval quality of a bundle through Milvus, with the in-memory reference figures.

    ``metrics`` keys: ``"mAP"`` (whole database; present when Milvus returned the whole
    database), ``"mAP@k"``, ``"P@k"`` for each requested ``k``, and ``"mAP@<topk>"``.
    """

    metrics: dict[str, float]
    reference: dict[str, float]
    agree: bool
    #: ``mAP`` (when the whole database is ranked) and ``mAP@k`` in expectation over every
    #: order of tied codes (:mod:`rsir_sdk.tie_aware`): Milvus and ``reference`` rank ties in
    #: one order (the store's: digests of the ids); these are their expectation over all
    #: orders, a figure of the codes alone
    tie_aware: dict[str, float]
    n_queries: int
    n_database: int
    topk: int
    database: str  # "learned" | "encoded"
    protocol: str
    leave_one_out: bool
    bits: int
    method: str
    encoder_id: str
    uri: str
    collection: str
    seconds: float
    failed: list[Failure] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        out = {k: v for k, v in self.__dict__.items() if k != "failed"}
        out["failed"] = [f.__dict__ for f in self.failed]
        return out


def evaluate_bundle(
    bundle: Bundle | str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    uri: str | None = None,
    collection: str | None = None,
    token: str | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    database: str = "auto",
    rule: RuleLike = None,
    encoder: Encoder | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> EvalResult:
    """Search the bundle's query split against its database through Milvus; see the module doc.

    Args:
        bundle: the bundle folder (it must hold ``split.json``).
        data: the archive the split belongs to (folder or CSV manifest); default: the one the
            manifest records (:attr:`rsir_sdk.Bundle.archive_source`).
        uri, collection, token: where to put the database codes; default a temporary Milvus
            Lite file, removed afterwards. A named collection must hold nothing but this
            database (it is filled by upsert, then its size is checked).
        ks: the ``k`` of mAP@k and P@k.
        database: ``"auto"``, ``"train"`` (AHCL) or ``"query"`` (MiLAN leave-one-out).
        rule: raster rule for TIFF archives.
        progress: called as ``progress(stage, done, total)``.

    Raises :class:`EvaluationError` when the split, the archive or some images are missing.
    Images that cannot be read are left out and listed in ``EvalResult.failed``.
    """
    t0 = time.perf_counter()
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    try:
        sp = b.split()
    except SplitError as exc:
        raise EvaluationError(str(exc)) from None
    split = {"train": sp.train_ids, "query": sp.query_ids}
    protocol = str((b.manifest.get("training") or {}).get("protocol") or sp.protocol)
    if database == "auto":
        database = "query" if protocol.lower().startswith("milan") else "train"
    if database not in ("train", "query"):
        raise EvaluationError(f"database must be 'auto', 'train' or 'query', got {database!r}")
    leave_one_out = database == "query"
    ks = sorted({int(k) for k in ks if int(k) >= 1})
    enc = encoder or Encoder(b, raster_rule=rule, batch_size=batch_size or 32)
    failed: list[Failure] = []

    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    use_learned = database == "train" and b.has_database
    root = data if data is not None else b.archive_source
    if root is None:
        raise EvaluationError(
            f"bundle {b.path} does not record its archive: give the archive folder (or CSV "
            f"manifest) the split belongs to with data= (--data DIR)"
        )
    if not Path(root).exists():
        raise EvaluationError(f"archive {root} does not exist (give --data DIR)")
    listing = open_archive(root, label_from="top")
    by_id = {it.id: it for it in listing.items}

    def items_for(ids: list[str], what: str) -> list[Item]:
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise EvaluationError(
                f"{len(missing)} {what} id(s) of {b.path / SPLIT_FILE} are not in the archive "
                f"{listing.root} (e.g. {missing[:3]}): is --data the archive the bundle was "
                f"trained on?"
            )
        return [by_id[i] for i in ids]

    def encode(items: list[Item], stage: str) -> tuple[list[Item], np.ndarray]:
        kept, parts = [], []
        for batch in iter_codes(enc, items, workers=workers, batch_size=batch_size,
                                on_failure=failed.append):
            kept += batch.items
            parts.append(batch.codes)
            report(stage, len(kept), len(items))
        codes = np.concatenate(parts) if parts else np.zeros((0, b.bits // 8), np.uint8)
        return kept, codes

    # ---- the database, in the store's tie order (shared with rsir_sdk.metrics: ties by index)
    if use_learned:
        db = b.load_database()
        db_ids, db_labels, db_codes, db_kind = list(db.ids), list(db.labels), db.codes, "learned"
        if set(db_ids) != set(split["train"]):
            log.warning("the bundle's database ids differ from the train split of %s", SPLIT_FILE)
    else:
        items, db_codes = encode(items_for(split[database], database), "database")
        db_ids, db_labels, db_kind = [it.id for it in items], [it.label for it in items], "encoded"
    order = tie_order(db_ids)
    db_ids = [db_ids[i] for i in order]
    db_labels = [db_labels[i] for i in order]
    db_codes = db_codes[order]
    n_db = len(db_ids)
    if n_db == 0:
        raise EvaluationError("the database is empty (every database image failed to load)")

    # ---- the queries
    if leave_one_out:
        q_ids, q_labels, q_codes = db_ids, db_labels, db_codes
    else:
        q_items, q_codes = encode(items_for(split["query"], "query"), "queries")
        q_ids, q_labels = [it.id for it in q_items], [it.label for it in q_items]
    if not q_ids:
        raise EvaluationError("no query could be encoded (every query image failed to load)")

    # ---- through Milvus
    tmp = None
    if uri is None:
        tmp = tempfile.mkdtemp(prefix="rsir-eval-")
        uri = str(Path(tmp) / "eval.db")
    name = collection or "eval_" + b.default_collection
    try:
        store = MilvusCodeStore(uri, name, bits=b.bits, token=token, encoder=b.identity())
        try:
            store.upsert(db_ids, db_codes, db_labels, encoder=b.identity())
            held = store.count()
            if held != n_db:
                raise EvaluationError(
                    f"collection {name!r} at {uri} holds {held} items but the database has "
                    f"{n_db}: evaluate into a fresh collection (or none: a temporary one)"
                )
            k_search = min(n_db, MAX_TOPK)  # leave-one-out: the query's own item is among them
            ranked_idx, ranked_dist = _search_all(store, q_codes, k_search, db_ids, report)
        finally:
            store.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    q_index = np.arange(n_db) if leave_one_out else None  # the queries are the database
    if q_index is not None:  # leave-one-out: drop each query's own item from its ranking
        keep = ranked_idx != q_index[:, None]
        n_keep = min(n_db - 1, k_search)
        ranked_idx = np.stack([r[m][:n_keep] for r, m in zip(ranked_idx, keep)])
        ranked_dist = np.stack([r[m][:n_keep] for r, m in zip(ranked_dist, keep)])
    n_ranked = n_db - (1 if leave_one_out else 0)
    full = ranked_idx.shape[1] == n_ranked

    labels_db = np.array(db_labels, dtype=object)
    rel = labels_db[ranked_idx] == np.array(q_labels, dtype=object)[:, None]
    got: dict[str, float] = {}
    if full:
        got["mAP"] = float(metrics.average_precision_of_ranking(rel).mean())
    got[f"mAP@{ranked_idx.shape[1]}"] = float(metrics.average_precision_of_ranking(rel).mean())
    for k in ks:
        if k <= ranked_idx.shape[1]:
            got[f"mAP@{k}"] = float(metrics.average_precision_of_ranking(rel[:, :k]).mean())
            got[f"P@{k}"] = float(rel[:, :k].mean(axis=1).mean())

    ref = _reference(q_codes, q_labels, db_codes, db_labels, ks, leave_one_out, q_index,
                     full, ranked_idx.shape[1])
    tie_aware = _reference(q_codes, q_labels, db_codes, db_labels, ks, leave_one_out, q_index,
                           full, ranked_idx.shape[1], ties="expected")
    agree = _same_ranking(q_codes, db_codes, ranked_idx, ranked_dist, leave_one_out, q_index)
    return EvalResult(
        metrics=got, reference=ref, agree=agree, tie_aware=tie_aware, n_queries=len(q_ids),
        n_database=n_db,
        topk=ranked_idx.shape[1], database=db_kind, protocol=protocol,
        leave_one_out=leave_one_out, bits=b.bits, method=b.method, encoder_id=b.encoder_id,
        uri=uri if tmp is None else "(temporary Milvus Lite file)", collection=name,
        seconds=time.perf_counter() - t0, failed=failed,
    )


def _search_all(store: MilvusCodeStore, q_codes: np.ndarray, k: int, db_ids: list[str],
                report) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database indices and distances of every query, Milvus order (distance, id)."""
    pos = {i: n for n, i in enumerate(db_ids)}
    step = max(1, HITS_PER_CALL // k)
    idx = np.zeros((len(q_codes), k), dtype=np.int64)
    dist = np.zeros((len(q_codes), k), dtype=np.int32)
    for start in range(0, len(q_codes), step):
        for row, hits in enumerate(store.search(q_codes[start : start + step], k=k), start):
            if len(hits) != k:
                raise EvaluationError(f"Milvus returned {len(hits)} hits for a top-{k} search")
            idx[row] = [pos[h.id] for h in hits]
            dist[row] = [h.distance for h in hits]
        report("search", min(start + step, len(q_codes)), len(q_codes))
    return idx, dist


def _reference(q_codes, q_labels, db_codes, db_labels, ks, loo, q_index, full, depth,
               ties: metrics.Ties = "index") -> dict[str, float]:
    """The in-memory figures; with ``ties="expected"`` only the mAPs (tie-aware)."""
    loo_kw: dict[str, Any] = {"exclude_self": loo, "query_indices": q_index} if loo else {}
    kw = {**loo_kw, "ties": ties}
    out: dict[str, float] = {}
    if full:
        out["mAP"] = metrics.mean_average_precision(q_codes, q_labels, db_codes, db_labels, **kw)
    out[f"mAP@{depth}"] = metrics.mean_average_precision(
        q_codes, q_labels, db_codes, db_labels, topk=depth, **kw)
    for k in ks:
        if k <= depth:
            out[f"mAP@{k}"] = metrics.mean_average_precision(
                q_codes, q_labels, db_codes, db_labels, topk=k, **kw)
            if ties == "index":  # precision@k has no tie-aware form here
                out[f"P@{k}"] = metrics.precision_at_k(q_codes, q_labels, db_codes, db_labels,
                                                       k, **loo_kw)
    return out


def _same_ranking(q_codes, db_codes, ranked_idx, ranked_dist, loo, q_index) -> bool:
    """Whether Milvus' ranking equals the exact numpy ranking (distance, then database index)."""
    from .codes import hamming_distances

    depth = ranked_idx.shape[1]
    for start in range(0, len(q_codes), 256):
        d = hamming_distances(q_codes[start : start + 256], db_codes)
        if loo:
            rows = np.arange(d.shape[0])
            d[rows, q_index[start : start + 256]] = np.iinfo(np.int32).max
        order = np.argsort(d, axis=1, kind="stable")[:, :depth]
        exp_dist = np.take_along_axis(d, order, axis=1)
        if not np.array_equal(exp_dist, ranked_dist[start : start + 256]):
            return False
        if depth == d.shape[1] - (1 if loo else 0) and not np.array_equal(
            order, ranked_idx[start : start + 256]
        ):
            return False
    return True


def describe(result: EvalResult) -> str:
    """A small plain-text table of an :class:`EvalResult`."""
    lines = [
        f"{result.method} {result.bits} bits, encoder {result.encoder_id}: {result.n_queries} "
        f"queries x {result.n_database} {result.database} database codes"
        f"{' (leave-one-out)' if result.leave_one_out else ''}, protocol {result.protocol or '-'}",
        f"{'metric':>10}  {'milvus':>8}  {'reference':>9}  {'tie-aware':>9}",
    ]
    for key, value in result.metrics.items():
        cells = [f"{v:9.4f}" if v is not None else f"{'-':>9}"
                 for v in (result.reference.get(key), result.tie_aware.get(key))]
        lines.append(f"{key:>10}  {value:8.4f}  " + "  ".join(cells))
    lines.append(
        f"Milvus ranking {'matches' if result.agree else 'DIFFERS FROM'} the exact numpy "
        f"ranking; {result.seconds:.1f}s (tie-aware: mean over every order of tied codes)"
    )
    if result.failed:
        lines.append(f"{len(result.failed)} image(s) could not be read and were left out")
    return "\n".join(lines)

