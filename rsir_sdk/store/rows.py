"""The rows of one write, checked completely before the first is sent, as columns, and their batches.

A write is validated as a whole (:mod:`.values`), turned into the collection's columns with their
digest columns (:mod:`.keys`), and only then cut into requests of at most ``max_rows`` rows and
:data:`MAX_BATCH_BYTES` bytes, so a call whose last row is bad writes nothing, and no request
exceeds gRPC's message limit (Milvus Lite 256 MiB, the server 64 MiB).

Why columns: pymilvus packs row dicts one value at a time (about 45 client CPU-seconds per million
rows of this schema, measured against the 2.3.5 server), column lists in bulk (about 5): the same
rows, a tenth of the client's work (``docs/scale.md``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator, Sequence

import numpy as np

from ..codes import as_packed
from ..errors import InvalidInputError
from . import keys, values
from .place import columns as place_columns

#: at most this many rows per write request
MAX_BATCH_ROWS = 50_000
#: at most this many bytes (estimated payload) per write request: half the server's 64 MiB
MAX_BATCH_BYTES = 32 * 1024 * 1024
#: fixed overhead per row: 4 digests of 32 bytes, field tags
ROW_OVERHEAD = 4 * 32 + 64
#: the place fields of a row: 7 doubles and their tags
PLACE_BYTES = 7 * (8 + 8)


@dataclass
class Columns:
    """One write's values, column by column, in the collection's field order, checked."""

    pk: list[str]
    id: list[str]
    code: np.ndarray  # uint8 (n, bits/8)
    label: list[str]
    label_h: list[str]
    path: list[str]
    path_h: list[str]
    metadata: list[dict[str, Any]]
    meta_h: list[dict[str, str]]
    sizes: list[int]  # estimated request bytes per row
    #: the place fields (:data:`rsir_sdk.geo.FIELDS`), ``float64 (n, 7)``; ``None`` for a
    #: collection made before them (format 2)
    place: np.ndarray | None = None
    #: the fine codes ``uint8 (n, fine_bits/8)`` (issue 20; :mod:`.fine`), ``None`` when the
    #: collection keeps none
    fine: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.id)

    def lists(self, start: int = 0, end: int | None = None) -> list[list[Any]]:
        """Rows ``start:end`` as column lists in field order (codes as ``bytes``; with fine
        codes, their hex last), the form ``Collection.insert``/``upsert`` take."""
        end = len(self) if end is None else end
        code = self.code[start:end]
        width = code.shape[1]
        raw = code.tobytes()
        return [self.pk[start:end], self.id[start:end],
                [raw[i : i + width] for i in range(0, len(raw), width)],
                self.label[start:end], self.label_h[start:end], self.path[start:end],
                self.path_h[start:end], self.metadata[start:end], self.meta_h[start:end],
                *([] if self.place is None else self.place[start:end].T.tolist()),
                *([] if self.fine is None else [self.fine_hex(start, end)])]

    def fine_hex(self, start: int = 0, end: int | None = None) -> list[str]:
        """The fine codes of rows ``start:end`` as lowercase hex (the main collection's
        ``fine_hex`` field, :mod:`.fine`)."""
        assert self.fine is not None
        return [row.tobytes().hex() for row in self.fine[start:end]]

    def take(self, index: Sequence[int]) -> "Columns":
        """The rows at ``index`` (in that order)."""
        idx = list(index)

        def pick(col: list) -> list:
            return [col[i] for i in idx]

        return Columns(pick(self.pk), pick(self.id), self.code[np.asarray(idx, dtype=np.intp)],
                       pick(self.label), pick(self.label_h), pick(self.path), pick(self.path_h),
                       pick(self.metadata), pick(self.meta_h), pick(self.sizes),
                       None if self.place is None else self.place[np.asarray(idx, dtype=np.intp)],
                       None if self.fine is None else self.fine[np.asarray(idx, dtype=np.intp)])


def build_columns(
    ids: Any,
    codes: Any,
    bits: int,
    labels: Any = None,
    paths: Any = None,
    metadata: Any = None,
    place: tuple[Any, Any] | None = None,
) -> Columns:
    """The :class:`Columns` of a write: every value checked, digests computed.

    ``place``: ``None`` for a collection without place fields (format 2), else the write's
    ``(footprints, times)`` (each ``None`` or one value per item; :func:`.place.columns`).

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
    meta, meta_sizes = values.metadata_sized(metadata, ids)
    meta_h: list[dict[str, str]] = []
    sizes: list[int] = []
    width = ROW_OVERHEAD + packed.shape[1]
    label_h = _digests(labels)
    path_h = _digests(paths)
    for i in range(n):
        mh = {_meta_key(k): _value_digest(v) for k, v in meta[i].items()} if meta[i] else {}
        # compact JSON of {"k<32 hex>":"<32 hex>",...}: 70 bytes an entry, commas, braces
        mh_size = 2 + 71 * len(mh) - (1 if mh else 0)
        if mh_size > values.MAX_METADATA_BYTES:
            raise InvalidInputError(
                f"metadata of id {ids[i]!r:.80} has {len(meta[i])} keys; their digests take "
                f"{mh_size} bytes, over the {values.MAX_METADATA_BYTES}-byte limit (about 900 "
                f"keys at most)"
            )
        meta_h.append(mh)
        sizes.append(width + _utf8(ids[i]) + _utf8(labels[i]) + _utf8(paths[i]) + meta_sizes[i]
                     + mh_size)
    places = None if place is None else place_columns(ids, meta, *place)
    if places is not None:
        sizes = [s + PLACE_BYTES for s in sizes]
    return Columns([keys.digest(i) for i in ids], ids, packed, labels, label_h, paths, path_h,
                   meta, meta_h, sizes, places)


def _digests(texts: list[str]) -> list[str]:
    """Digest of each text; repeated texts (labels, empty paths) are hashed once."""
    seen: dict[str, str] = {}
    out = []
    for t in texts:
        d = seen.get(t)
        if d is None:
            d = seen[t] = keys.digest(t)
        out.append(d)
    return out


@lru_cache(maxsize=4096)
def _meta_key(key: str) -> str:
    return keys.meta_key(key)


def _value_digest(value: Any) -> str:
    if (isinstance(value, (int, float, bool)) or value is None
            or (isinstance(value, str) and len(value) <= 256)):
        return _scalar_digest(type(value).__name__, value)
    return keys.digest(keys.canonical_value(value))


@lru_cache(maxsize=65536)
def _scalar_digest(kind: str, value: Any) -> str:  # kind: 1, True and 1.0 hash alike
    return keys.digest(keys.canonical_value(value))


def spans(sizes: Sequence[int], max_rows: int = MAX_BATCH_ROWS,
          max_bytes: int = MAX_BATCH_BYTES) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of consecutive requests: at most ``max_rows`` rows and ``max_bytes``
    bytes each (a single larger row still goes alone)."""
    max_rows = max(1, int(max_rows))
    start, n = 0, len(sizes)
    while start < n:
        end, total = start, 0
        while end < n and end - start < max_rows:
            if end > start and total + sizes[end] > max_bytes:
                break
            total += sizes[end]
            end += 1
        yield start, end
        start = end


def batches(
    rows: Sequence[Any], sizes: Sequence[int], max_rows: int = MAX_BATCH_ROWS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[tuple[int, list[Any]]]:
    """``(start, batch)`` slices of ``rows`` cut as :func:`spans` says."""
    for start, end in spans(sizes, max_rows, max_bytes):
        yield start, list(rows[start:end])


def problem(item_id: Any, label: Any, path: Any, metadata: Any) -> str | None:
    """Why one item cannot be stored (its id, label, path or metadata), or ``None``.

    The one "storable item" rule: the per-item form of :func:`build_columns`' checks, for
    callers that report bad items and go on. The archive lister (:mod:`rsir_sdk.archive`, stage
    ``list``, with the absolute path) and the ingestion (stage ``write``, with the path it
    stores) both ask it, so an item listed is an item the store takes. A name that is not
    UTF-8 (a lone surrogate, as Python decodes such a file name) is named with its bytes.
    """
    for what, value in (("file name", path), ("id", item_id), ("label", label)):
        if isinstance(value, str) and not is_utf8(value):
            return f"{what} is not valid UTF-8: {_raw(value)!r:.200} (rename it)"
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


def _raw(text: str) -> bytes:
    """The bytes a name not valid as UTF-8 came from (as the file system gave them)."""
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:  # a surrogate no file system byte decodes to
        return text.encode("utf-8", "backslashreplace")


def is_utf8(text: str) -> bool:
    """Whether ``text`` is valid Unicode text (a name that is not UTF-8 holds lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utf8(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _has_rows(codes: Any) -> bool:
    if isinstance(codes, (bytes, bytearray, memoryview)):
        return len(codes) > 0
    try:
        return len(codes) > 0
    except TypeError:
        return True
