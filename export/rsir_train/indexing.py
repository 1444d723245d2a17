"""Put one side of a trained bundle's split into Milvus with the bundle's encoder.

Why: a symmetric bundle (MiLAN) has no database codes; the archive is encoded by the same ONNX
encoder that codes queries. This is done through :meth:`rsir_sdk.Retriever.index`, the call
users make (resumable, failures reported), not by a second ingestion path.
"""

from __future__ import annotations

import os

from rsir_sdk.archive import ArchiveListing
from rsir_sdk.ingest import IngestSummary
from rsir_sdk.retriever import Retriever
from rsir_sdk.splits import Split

__all__ = ["SIDES", "index_split_side", "side_ids"]

#: what can be indexed: the split's retrieval database, its train or query side, or everything
SIDES = ("database", "train", "query", "all")


def side_ids(archive: ArchiveListing, split: Split, side: str) -> list[str]:
    """Ids of one side of ``split``, sorted (= Milvus' tie order).

    ``side``: ``train``, ``query``, ``all``, or ``database`` = the retrieval archive of the
    split's protocol (60/40, MiLAN: the query side, which is query set and archive at once;
    80/20 or 50/50, AHCL: the train side).
    """
    if side == "database":
        side = "query" if split.protocol == "60-40" else "train"
    split.indices(archive)  # SplitError when the split belongs to another archive
    if side == "train":
        return sorted(split.train_ids)
    if side == "query":
        return sorted(split.query_ids)
    if side == "all":
        return sorted(it.id for it in archive.items)
    raise ValueError(f"side must be one of {', '.join(SIDES)}, got {side!r}")


def index_split_side(
    bundle: str | os.PathLike,
    archive: ArchiveListing,
    split: Split,
    uri: str,
    collection: str | None = None,
    *,
    side: str = "database",
    token: str | None = None,
    batch_size: int | None = None,
) -> IngestSummary:
    """Encode one side of ``split`` (see :func:`side_ids`) into ``collection`` at ``uri``.

    The collection defaults to the bundle's ``<method>_<bits>_<encoder_id>``; ids already there
    are skipped (a re-run finishes an interrupted one).

    >>> s = index_split_side("bundle/", data.archive, data.split, "./rsir.db")  # doctest: +SKIP
    >>> s.collection, s.indexed                                                 # doctest: +SKIP
    ('milan_32_3f2a...', 960)
    """
    with Retriever(bundle, uri=uri, collection=collection, token=token) as r:
        return r.index(archive, only_ids=side_ids(archive, split, side), batch_size=batch_size)
