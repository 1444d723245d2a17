"""Evaluate a bundle the way it is deployed: its query split searched THROUGH MILVUS.

Why: training reports mAP computed in memory. What users get is a Milvus search over codes
stored in a ``BINARY_VECTOR`` collection, queried with codes from the ONNX encoder run by
onnxruntime on images decoded by the SDK. :func:`evaluate_bundle` measures that path in two
steps, so that every figure of one evaluation comes from one set of codes:

1. :func:`evaluation_codes` (:mod:`rsir_sdk.eval_codes`, re-exported here) makes the
   :class:`EvalCodes` once: it reads the bundle's ``split.json`` (train = retrieval database,
   query), lists the archive the split belongs to (``data``: a folder with one sub-folder per
   class, or a CSV manifest), takes the bundle's learned database codes as they are (AHCL) or,
   for symmetric bundles (MiLAN), encodes the database images, and encodes the query images
   (same pipeline as ``rsir index``); each image is encoded once;
2. :func:`evaluate_codes` puts the database into a Milvus collection, searches it with the
   query codes for the top ``k`` = database size (capped at Milvus' 16384) and computes mAP over
   the whole database, mAP@k and precision@k **from Milvus' ranking**, and the same numbers
   with :mod:`rsir_sdk.metrics` on the codes in memory (``reference``); ``agree`` says whether
   Milvus ranked every query exactly as the reference did.

The plots of ``rsir eval --plot`` (:func:`rsir_sdk.plots.curves_of`) are computed from the same
:class:`EvalCodes`.

Ranking and ties: the store orders hits by (distance, digest of the id)
(:mod:`rsir_sdk.store.topk`); :mod:`rsir_sdk.metrics` ranks ties the same way when it is given
the database ids (``db_ids=``, which :meth:`EvalCodes.metric_args` passes), so both rankings use
one tie rule and agree exactly when Milvus returns the whole database. A bundle with a fine code
(issue 20) is evaluated with the store's default ranking of such collections: (distance, fine
code distance, digest), in Milvus (the collection keeps the fine codes, the queries send theirs)
and in memory (``fine=`` of the metrics) alike. The tie-aware figures stay those of the
retrieval codes alone (their expectation over every order of tied codes).

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
from .bundle import Bundle
from .codes import fine_ranking_key, hamming_distances
from .encoder import Encoder
from .errors import EvaluationError
from .eval_codes import EvalCodes, EvalOptions, Progress, evaluation_codes, stage_reporter
from .failures import Failure
from .store import MAX_TOPK, MilvusCodeStore, tie_order

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_KS", "EvalCodes", "EvalOptions", "EvalResult", "describe", "evaluate_bundle",
           "evaluate_codes", "evaluation_codes"]

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
    #: the fine code's bits when the ranking used it (distance, fine distance, digest), else None
    fine_bits: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        out = {k: v for k, v in self.__dict__.items() if k != "failed"}
        out["failed"] = [f.__dict__ for f in self.failed]
        return out


def evaluate_bundle(
    bundle: Bundle | str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    options: EvalOptions | None = None,
    uri: str | None = None,
    collection: str | None = None,
    token: str | None = None,
    encoder: Encoder | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Search the bundle's query split against its database through Milvus; see the module doc.

    :func:`evaluation_codes` then :func:`evaluate_codes` (call them yourself to draw the plots
    from the same codes, as ``rsir eval --plot`` does).

    Args:
        bundle: the bundle folder (it must hold ``split.json``).
        data: the archive the split belongs to (folder or CSV manifest); default: the one the
            manifest records (:attr:`rsir_sdk.Bundle.archive_source`).
        ks: the ``k`` of mAP@k and P@k.
        options: which side is the database, raster rule, workers, batch size
            (:class:`EvalOptions`; default: by the bundle's protocol).
        uri, collection, token: where to put the database codes; default a temporary Milvus
            Lite file, removed afterwards. A named collection must hold nothing but this
            database (it is filled by upsert, then its size is checked).
        encoder: an :class:`~rsir_sdk.Encoder` of the bundle to use (default: a new one).
        progress: called as ``progress(stage, done, total)``.

    Raises :class:`EvaluationError` when the split, the archive or some images are missing.
    Images that cannot be read are left out and listed in ``EvalResult.failed``.
    """
    codes = evaluation_codes(bundle, data, options, encoder=encoder, progress=progress)
    return evaluate_codes(codes, ks=ks, uri=uri, collection=collection, token=token,
                          progress=progress)




def evaluate_codes(
    codes: EvalCodes,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    uri: str | None = None,
    collection: str | None = None,
    token: str | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Search ``codes``' database through Milvus with its query codes and compute the figures
    from Milvus' ranking and in memory; arguments as in :func:`evaluate_bundle`."""
    t0 = time.perf_counter()
    b = codes.bundle
    ks = sorted({int(k) for k in ks if int(k) >= 1})
    name = collection or "eval_" + b.default_collection
    ranked_idx, ranked_dist = _milvus_ranking(codes, uri, name, token, stage_reporter(progress, "search"))
    depth = ranked_idx.shape[1]
    full = depth == codes.n_ranked
    labels_db = np.array(codes.db_labels, dtype=object)
    rel = labels_db[ranked_idx] == np.array(codes.q_labels, dtype=object)[:, None]
    got: dict[str, float] = {}
    if full:
        got["mAP"] = float(metrics.average_precision_of_ranking(rel).mean())
    got[f"mAP@{depth}"] = float(metrics.average_precision_of_ranking(rel).mean())
    for k in ks:
        if k <= depth:
            got[f"mAP@{k}"] = float(metrics.average_precision_of_ranking(rel[:, :k]).mean())
            got[f"P@{k}"] = float(rel[:, :k].mean(axis=1).mean())
    return EvalResult(
        metrics=got, reference=_reference(codes, ks, full, depth),
        agree=_same_ranking(codes, ranked_idx, ranked_dist),
        tie_aware=_reference(codes, ks, full, depth, ties="expected"),
        n_queries=len(codes.q_ids), n_database=len(codes.db_ids), topk=depth,
        database=codes.database, protocol=codes.protocol, leave_one_out=codes.leave_one_out,
        bits=b.bits, method=b.method, encoder_id=b.encoder_id,
        uri=uri if uri is not None else "(temporary Milvus Lite file)", collection=name,
        seconds=codes.seconds + time.perf_counter() - t0, failed=list(codes.failed),
        fine_bits=b.fine_bits if "fine" in codes.metric_args() else None,
    )


def _milvus_ranking(codes: EvalCodes, uri: str | None, name: str, token: str | None,
                    report: Callable[[int, int], None]) -> tuple[np.ndarray, np.ndarray]:
    """Every query's ranking by a Milvus search of the database: database indices and
    distances ``(n_queries, depth)``, each query's own item dropped in leave-one-out."""
    b, n_db = codes.bundle, len(codes.db_ids)
    tmp = None
    if uri is None:
        tmp = tempfile.mkdtemp(prefix="rsir-eval-")
        uri = str(Path(tmp) / "eval.db")
    try:
        fine = codes.db_fine is not None and codes.q_fine is not None
        store = MilvusCodeStore(uri, name, bits=b.bits, token=token, encoder=b.identity(),
                                fine_bits=b.fine_bits if fine else None,
                                scene_test=b.scene_test if fine else None)
        try:
            if fine and store.exists and store.fine_bits is None:
                raise EvaluationError(
                    f"collection {name!r} at {uri} was made without fine codes, so Milvus would "
                    f"not rank as this bundle does: evaluate into a fresh collection (or none: "
                    f"a temporary one)")
            store.upsert(codes.db_ids, codes.db_codes, codes.db_labels, encoder=b.identity(),
                         fine=codes.db_fine if fine else None)
            held = store.count()
            if held != n_db:
                raise EvaluationError(
                    f"collection {name!r} at {uri} holds {held} items but the database has "
                    f"{n_db}: evaluate into a fresh collection (or none: a temporary one)"
                )
            k_search = min(n_db, MAX_TOPK)  # leave-one-out: the query's own item is among them
            idx, dist = _search_all(store, codes, k_search, report)
        finally:
            store.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    q_index = codes.query_indices
    if q_index is not None:  # leave-one-out: drop each query's own item from its ranking
        keep = idx != q_index[:, None]
        n_keep = min(n_db - 1, k_search)
        idx = np.stack([r[m][:n_keep] for r, m in zip(idx, keep)])
        dist = np.stack([r[m][:n_keep] for r, m in zip(dist, keep)])
    return idx, dist


def _search_all(store: MilvusCodeStore, codes: EvalCodes, k: int,
                report: Callable[[int, int], None]) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database indices and distances of every query, Milvus order (distance, fine
    code distance when the collection keeps fine codes, digest of the id)."""
    q_codes, q_fine = codes.q_codes, codes.q_fine if codes.db_fine is not None else None
    pos = {i: n for n, i in enumerate(codes.db_ids)}
    step = max(1, HITS_PER_CALL // k)
    idx = np.zeros((len(q_codes), k), dtype=np.int64)
    dist = np.zeros((len(q_codes), k), dtype=np.int32)
    for start in range(0, len(q_codes), step):
        part = slice(start, start + step)
        fine = None if q_fine is None else q_fine[part]
        for row, hits in enumerate(store.search(q_codes[part], k=k, fine=fine), start):
            if len(hits) != k:
                raise EvaluationError(f"Milvus returned {len(hits)} hits for a top-{k} search")
            idx[row] = [pos[h.id] for h in hits]
            dist[row] = [h.distance for h in hits]
        report(min(start + step, len(q_codes)), len(q_codes))
    return idx, dist


def _reference(codes: EvalCodes, ks: Sequence[int], full: bool, depth: int,
               ties: metrics.Ties = "index") -> dict[str, float]:
    """The in-memory figures; with ``ties="expected"`` only the mAPs (tie-aware)."""
    args = (codes.q_codes, codes.q_labels, codes.db_codes, codes.db_labels)
    kw = {**codes.metric_args(), "ties": ties}
    if ties == "expected":  # the expectation over every order of ties: of the codes alone
        kw.pop("fine", None)
    out: dict[str, float] = {}
    if full:
        out["mAP"] = metrics.mean_average_precision(*args, **kw)
    out[f"mAP@{depth}"] = metrics.mean_average_precision(*args, topk=depth, **kw)
    for k in ks:
        if k <= depth:
            out[f"mAP@{k}"] = metrics.mean_average_precision(*args, topk=k, **kw)
            if ties == "index":  # precision@k has no tie-aware form here
                out[f"P@{k}"] = metrics.precision_at_k(*args, k, **codes.metric_args())
    return out


def _same_ranking(codes: EvalCodes, ranked_idx: np.ndarray, ranked_dist: np.ndarray) -> bool:
    """Whether Milvus' ranking equals the exact numpy ranking (distance, then the store's tie
    order: digests of the ids; with fine codes near-duplicates first, then distance, then the
    fine code's distance: :func:`~rsir_sdk.codes.fine_ranking_key`)."""
    q_codes, q_index = codes.q_codes, codes.query_indices
    order_db = tie_order(codes.db_ids)  # column j of the sorted matrix is item order_db[j]
    db_sorted = codes.db_codes[order_db]
    fine = codes.metric_args().get("fine")
    fine_sorted = None if fine is None else fine[1][order_db]
    depth = ranked_idx.shape[1]
    own = None if q_index is None else np.argsort(order_db)[q_index]  # own item's column
    for start in range(0, len(q_codes), 256):
        d = hamming_distances(q_codes[start : start + 256], db_sorted)
        if own is not None:
            where = own[start : start + 256]
            d[np.arange(d.shape[0]), where] = np.iinfo(np.int32).max
        key = d.astype(np.int64)
        if fine is not None and fine_sorted is not None:
            q_fine = fine[0][start : start + 256]
            fine_d = hamming_distances(q_fine, fine_sorted)
            leader = None if len(fine) < 3 else fine[2].leaders(q_fine, fine_sorted, fine_d)
            key = fine_ranking_key(d, fine_d, fine_sorted.shape[1] * 8, leader)
            key[d == np.iinfo(np.int32).max] = np.iinfo(np.int64).max  # the own item last
        order = np.argsort(key, axis=1, kind="stable")[:, :depth]
        if not np.array_equal(np.take_along_axis(d, order, axis=1),
                              ranked_dist[start : start + 256]):
            return False
        if depth == codes.n_ranked and not np.array_equal(
            order_db[order], ranked_idx[start : start + 256]
        ):
            return False
    return True


def describe(result: EvalResult) -> str:
    """A small plain-text table of an :class:`EvalResult`."""
    lines = [
        f"{result.method} {result.bits} bits, encoder {result.encoder_id}: {result.n_queries} "
        f"queries x {result.n_database} {result.database} database codes"
        f"{' (leave-one-out)' if result.leave_one_out else ''}, protocol {result.protocol or '-'}"
        + (f"; ties ranked by the {result.fine_bits}-bit fine code" if result.fine_bits else ""),
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

