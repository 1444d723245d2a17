"""The rows of one write, checked completely before the first is sent, and their batches.

A write is validated as a whole (:mod:`.values`), turned into rows with their digest columns
(:mod:`.keys`), and only then cut into batches of at most ``max_rows`` rows and
:data:`MAX_BATCH_BYTES` bytes, so a call whose last row is bad writes nothing, and no request
exceeds gRPC's message limit (Milvus Lite 256 MiB, the server 64 MiB).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from ..codes import as_packed
from ..errors import InvalidInputError
from . import keys, values

#: at most this many rows per upsert request
MAX_BATCH_ROWS = 5000
#: at most this many bytes (estimated payload) per upsert request: half the server's 64 MiB
MAX_BATCH_BYTES = 32 * 1024 * 1024
#: fixed overhead per row: 4 digests of 32 bytes, field tags
ROW_OVERHEAD = 4 * 32 + 64


def build_rows(
    ids: Any,
    codes: Any,
    bits: int,
    labels: Any = None,
    paths: Any = None,
    metadata: Any = None,
) -> tuple[list[dict[str, Any]], list[int]]:
    """``(rows, sizes)`` for an upsert: every value checked, digests computed.

    Raises :class:`~rsir_sdk.errors.InvalidInputError` (or
    :class:`~rsir_sdk.errors.CodeLengthError` for codes) naming the first bad item; nothing is
    sent before this returns.
    """
    ids = values.ids(ids)
    n = len(ids)
    if n == 0 and not _has_rows(codes):
        packed = np.zeros((0, bits // 8), np.uint8)
    else:
        packed = as_packed(codes, bits)
    if packed.shape[0] != n:
        raise InvalidInputError(f"{n} ids but {packed.shape[0]} codes")
    labels = values.labels(labels, n)
    paths = values.paths(paths, n)
    meta = values.metadata(metadata, ids)
    rows: list[dict[str, Any]] = []
    sizes: list[int] = []
    for i in range(n):
        meta_h = keys.meta_digests(meta[i])
        meta_size = values.json_size(meta[i])
        meta_h_size = values.json_size(meta_h)
        if meta_h_size > values.MAX_METADATA_BYTES:
            raise InvalidInputError(
                f"metadata of id {ids[i]!r:.80} has {len(meta[i])} keys; their digests take "
                f"{meta_h_size} bytes, over the {values.MAX_METADATA_BYTES}-byte limit (about 900 "
                f"keys at most)"
            )
        rows.append({
            "pk": keys.digest(ids[i]),
            "id": ids[i],
            "code": packed[i].tobytes(),
            "label": labels[i],
            "label_h": keys.digest(labels[i]),
            "path": paths[i],
            "path_h": keys.digest(paths[i]),
            "metadata": meta[i],
            "meta_h": meta_h,
        })
        sizes.append(
            ROW_OVERHEAD + packed.shape[1] + _utf8(ids[i]) + _utf8(labels[i]) + _utf8(paths[i])
            + meta_size + meta_h_size
        )
    return rows, sizes


def batches(
    rows: Sequence[dict[str, Any]], sizes: Sequence[int], max_rows: int = MAX_BATCH_ROWS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """``(start, batch)`` slices of ``rows``: at most ``max_rows`` rows and ``max_bytes`` bytes
    each (a single larger row still goes alone)."""
    max_rows = max(1, int(max_rows))
    start = 0
    while start < len(rows):
        end, total = start, 0
        while end < len(rows) and end - start < max_rows:
            if end > start and total + sizes[end] > max_bytes:
                break
            total += sizes[end]
            end += 1
        yield start, list(rows[start:end])
        start = end


def problem(item_id: Any, label: Any, path: Any, metadata: Any) -> str | None:
    """Why one item cannot be stored (its id, label, path or metadata), or ``None``: the
    per-item form of :func:`build_rows`' checks, for pipelines that report bad items and go on."""
    try:
        ids = values.ids([item_id])
        values.labels([label], 1)
        values.paths([path], 1)
        meta = values.metadata([metadata], ids)
        size = values.json_size(keys.meta_digests(meta[0]))
    except InvalidInputError as exc:
        return str(exc)
    if size > values.MAX_METADATA_BYTES:
        return f"metadata has {len(meta[0])} keys, too many to index (about 900 at most)"
    return None


def _utf8(text: str) -> int:
    return len(text.encode("utf-8"))


def _has_rows(codes: Any) -> bool:
    if isinstance(codes, (bytes, bytearray, memoryview)):
        return len(codes) > 0
    try:
        return len(codes) > 0
    except TypeError:
        return True

