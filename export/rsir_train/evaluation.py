"""Retrieval quality of a trained bundle under the AHCL and MiLAN protocols, through Milvus.

Why a wrapper and not a second evaluator: the numbers are those of
:func:`rsir_sdk.evaluate.evaluate_bundle` (the exported ONNX encoder, the SDK's decoding, a
Milvus search, checked against the exact in-memory ranking of :mod:`rsir_sdk.metrics`). This
module only names the two protocols and the manifest keys their results are recorded under:

- ``milan``: the query side is query set and database at once, leave-one-out, mAP@20
  normalised by the relevant items retrieved → ``milan_map@20``;
- ``ahcl``: the query side against the train side (the bundle's learned codes when it has
  them, else encoded by the network), mAP over the whole database → ``ahcl_map``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from rsir_sdk.bundle import Bundle
from rsir_sdk.errors import EvaluationError
from rsir_sdk.evaluate import EvalOptions, evaluate_bundle
from rsir_sdk.metrics import Ties, mean_average_precision
from rsir_sdk.store import tie_order

__all__ = ["MILAN_TOPK", "PROTOCOLS", "archive_map", "evaluate_protocols", "in_tie_order",
           "metric_key"]

#: evaluation protocol -> the split side used as the database
PROTOCOLS = {"milan": "query", "ahcl": "train"}
MILAN_TOPK = 20


def archive_map(codes: Any, labels: Sequence | np.ndarray, topk: int = MILAN_TOPK,
                ties: Ties = "index", ids: Sequence[str] | None = None) -> float:
    """The MiLAN protocol's figure on packed codes: the codes ranked among themselves,
    leave-one-out, mAP@``topk`` (used for test sides, validation parts and baselines alike).
    ``ties``: ``"index"`` (one fixed order: the store's when ``ids`` are given, else by index)
    or ``"expected"`` (over every order of tied items, :mod:`rsir_sdk.tie_aware`). ``ids``:
    the item ids, so that ties rank as a Milvus search ranks them
    (:func:`rsir_sdk.metrics.mean_average_precision`'s ``db_ids``)."""
    return float(mean_average_precision(codes, labels, codes, labels, topk=topk,
                                        exclude_self=True, ties=ties, db_ids=ids))


def in_tie_order(indices: Any, ids: Sequence[str]) -> np.ndarray:
    """``indices`` (into ``ids``, an archive's items) in the store's tie order (digests of the
    ids): a ranking made outside :mod:`rsir_sdk.metrics` (the cosine baselines) over items
    listed so, ties by index, ranks as a Milvus search does (:func:`rsir_sdk.store.tie_order`).
    The metrics need no such step: give them the ids (``db_ids=``, ``archive_map(ids=)``)."""
    idx = np.asarray(indices)
    return idx[tie_order([ids[i] for i in idx])]


def metric_key(protocol: str, topk: int = MILAN_TOPK) -> str:
    """The manifest key of a protocol's metric: ``milan_map@20`` or ``ahcl_map``."""
    return f"{protocol}_map" + (f"@{topk}" if protocol == "milan" else "")


def evaluate_protocols(
    bundle: str | os.PathLike,
    data: str | os.PathLike | None = None,
    protocols: Sequence[str] = ("milan",),
    *,
    uri: str | None = None,
    token: str | None = None,
    topk: int = MILAN_TOPK,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``bundle`` on its own split of the archive ``data`` under each protocol.

    ``data``: the archive folder or CSV manifest; default the one the bundle records.
    ``uri``: the Milvus to search (default a temporary Milvus Lite file); each protocol gets
    its own collection ``eval_<protocol>_<method>_<bits>_<encoder_id>`` there. Returns
    ``{"milan_map@20": ..., "milan_map@20_reference": ..., "milvus_agrees_milan": True,
    "milan_map@20_tie_aware": ..., "n_queries_milan": ..., "n_database_milan": ...,
    "eval_seconds_milan": ..., ...}``.
    """
    b = Bundle.load(bundle)
    out: dict[str, Any] = {}
    for p in protocols:
        if p not in PROTOCOLS:
            raise EvaluationError(f"unknown protocol {p!r}; choose one of {sorted(PROTOCOLS)}")
        res = evaluate_bundle(
            b, data, uri=uri, token=token, ks=(topk,),
            options=EvalOptions(database=PROTOCOLS[p], batch_size=batch_size),
            collection=f"eval_{p}_{b.default_collection}" if uri else None,
        )
        name = f"mAP@{topk}" if p == "milan" else "mAP"
        if name not in res.metrics:
            raise EvaluationError(
                f"{name} needs the whole database ranked, which Milvus could not return "
                f"({res.n_database} items)"
            )
        key = metric_key(p, topk)
        out[key] = res.metrics[name]
        out[f"{key}_reference"] = res.reference[name]
        out[f"{key}_tie_aware"] = res.tie_aware[name]
        out[f"milvus_agrees_{p}"] = res.agree
        out[f"n_queries_{p}"] = res.n_queries
        out[f"n_database_{p}"] = res.n_database
        out[f"eval_seconds_{p}"] = round(res.seconds, 1)
    return out
