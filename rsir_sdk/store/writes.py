"""The writes of :class:`~rsir_sdk.store.MilvusCodeStore`: upsert, insert, bulk load.

Every write is checked completely before its first row is sent (:mod:`.rows`) and goes to
Milvus as column lists (:meth:`~.connect.Connection.write_columns`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import StoreError
from . import rows, values
from .connect import Connection
from .schema import UPSERT_BATCH, check_same_encoder

log = logging.getLogger(__name__)


class WritesMixin:
    """Writes; the store class supplies the connection, the collection and its creation."""

    _conn: Connection
    collection: str
    bits: int
    encoder: dict[str, Any] | None
    is_lite: bool

    def _ensure_created(self) -> None:  # pragma: no cover - defined by the store
        raise NotImplementedError

    def prepare_for_search(self, *, timeout: float | None = 3600.0,
                           progress: Any = None) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def _columns(self, ids, codes, labels, paths, metadata, encoder) -> rows.Columns:
        if encoder is not None and self.encoder is not None:
            check_same_encoder(self.encoder, encoder, self.collection)
        return rows.build_columns(ids, codes, self.bits, labels, paths, metadata)

    def upsert(
        self,
        ids: Sequence[str],
        codes: np.ndarray,
        labels: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        encoder: Mapping[str, Any] | None = None,
        batch_size: int = UPSERT_BATCH,
    ) -> int:
        """Insert or replace items by id; returns how many rows were written.

        Everything is validated before the first row is written, so a bad call changes nothing
        (:class:`~rsir_sdk.errors.InvalidInputError` or ``CodeLengthError`` naming the item).
        Requests hold at most ``batch_size`` (and 50,000) rows and 32 MiB. ``encoder`` (a
        bundle identity) is checked against the collection's.
        """
        size = values.positive_int(batch_size, "batch_size")
        cols = self._columns(ids, codes, labels, paths, metadata, encoder)
        if not len(cols):
            return 0
        self._ensure_created()
        for start, end in rows.spans(cols.sizes, min(size, rows.MAX_BATCH_ROWS)):
            try:
                self._conn.write_columns("upsert", self.collection, cols.lists(start, end),
                                         what=f"upsert into {self.collection!r}")
            except StoreError as exc:
                raise StoreError(
                    f"{exc} (after {start} of {len(cols)} rows were written; re-running the "
                    f"same call is safe: upsert is idempotent)"
                ) from None
        return len(cols)

    def insert(
        self,
        ids: Sequence[str],
        codes: np.ndarray,
        labels: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        encoder: Mapping[str, Any] | None = None,
        batch_size: int = UPSERT_BATCH,
    ) -> int:
        """Add items whose ids the collection does **not** hold; returns how many were written.

        Faster than :meth:`upsert` (on a server an upsert is a delete plus an insert: about
        twice the server's work). The caller vouches that the ids are new (e.g. it just asked
        :meth:`existing_ids`, as ``rsir index`` does): an id that is present would be stored
        twice. A request is never retried as an insert: one that fails is written again as an
        upsert, which replaces whatever part of it reached Milvus. Checked like :meth:`upsert`.
        """
        size = values.positive_int(batch_size, "batch_size")
        cols = self._columns(ids, codes, labels, paths, metadata, encoder)
        if not len(cols):
            return 0
        self._ensure_created()
        for start, end in rows.spans(cols.sizes, min(size, rows.MAX_BATCH_ROWS)):
            data = cols.lists(start, end)
            try:
                self._conn.write_columns("insert", self.collection, data,
                                         what=f"insert into {self.collection!r}")
            except StoreError as exc:
                log.info("insert into %s failed (%s); writing the batch as an upsert",
                         self.collection, exc)
                try:
                    self._conn.write_columns("upsert", self.collection, data,
                                             what=f"upsert into {self.collection!r}")
                except StoreError as again:
                    raise StoreError(
                        f"{again} (after {start} of {len(cols)} rows were written; the rows "
                        f"written are complete: re-running skips them)"
                    ) from None
        return len(cols)

    def bulk_insert(
        self,
        ids: Sequence[str],
        codes: np.ndarray,
        labels: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        staging_dir: str | os.PathLike,
        encoder: Mapping[str, Any] | None = None,
        skip_existing: bool = True,
        chunk_rows: int | None = None,
        prepare: bool = True,
        timeout: float | None = 3600.0,
        progress: Any = None,
    ) -> dict[str, Any]:
        """Load many new items through Milvus' bulk import (a server; see :mod:`.bulk`).

        ``staging_dir`` must be readable by the server at the same path. Ids the collection
        holds are skipped (``skip_existing``), so an interrupted call can simply be repeated:
        its journal makes every chunk count once. Then :meth:`prepare_for_search` (``prepare``).
        On Milvus Lite (no bulk import) the new items are inserted. Returns counts and timings.
        """
        from . import bulk

        cols = self._columns(ids, codes, labels, paths, metadata, encoder)
        self._ensure_created()
        out = bulk.load_columns(self, cols, staging_dir,  # type: ignore[arg-type]
                                skip_existing=skip_existing, chunk_rows=chunk_rows,
                                timeout=timeout, progress=progress)
        if prepare:
            out["prepare"] = self.prepare_for_search(timeout=timeout, progress=progress)
        return out

