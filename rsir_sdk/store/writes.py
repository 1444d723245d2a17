"""The one writer of a :class:`~rsir_sdk.store.MilvusCodeStore`: create, upsert, insert, bulk load.

Why an object of its own (composed by the store, ``store.writer``): every write follows one
discipline, kept in one place. The collection is created by the first write and by nothing
else (a read never creates a collection, nor a Milvus Lite file). A write is checked completely
before its first row is sent (:mod:`.rows`), so a bad call changes nothing, and goes to Milvus
as column lists (:meth:`~.connect.Connection.write_columns`) in requests of bounded size.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..codes import as_packed
from ..errors import CollectionMismatchError, InvalidInputError, StoreError
from . import fine, keys, place, reads, rows, server, values
from .schema import AUTO_INDEX, PK_CHUNK, check_same_encoder, make_schema

if TYPE_CHECKING:  # pragma: no cover
    from .collection import MilvusCodeStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BulkOptions:
    """How :meth:`~rsir_sdk.store.MilvusCodeStore.bulk_insert` loads (one value, not four
    keywords): ``skip_existing`` (ids the collection holds are left out, so a repeated call
    resumes), ``chunk_rows`` (rows per import task; ``None``: a million), ``prepare`` (then
    :meth:`~rsir_sdk.store.MilvusCodeStore.prepare_for_search`), ``timeout`` (seconds for the
    import and the prepare; ``None``: no deadline), ``progress`` (a callable that gets
    :class:`~rsir_sdk.store.PrepareProgress` updates).

    >>> BulkOptions(chunk_rows=2000, prepare=False).skip_existing
    True
    """

    skip_existing: bool = True
    chunk_rows: int | None = None
    prepare: bool = True
    timeout: float | None = 3600.0
    #: called with :class:`~rsir_sdk.store.PrepareProgress` updates (``None``: none)
    progress: Any = None

    def __post_init__(self) -> None:
        if self.chunk_rows is not None:
            values.positive_int(self.chunk_rows, "chunk_rows")
        if self.timeout is not None and (isinstance(self.timeout, bool) or not isinstance(
                self.timeout, (int, float)) or self.timeout <= 0):
            raise InvalidInputError(f"timeout must be a positive number of seconds or None, got "
                                    f"{self.timeout!r}")


class Writer:
    """The writes of one store; the store supplies its connection, collection and encoder."""

    def __init__(self, store: "MilvusCodeStore"):
        self.store = store

    def ensure_created(self, fine_bits: int | None = None) -> bool:
        """Create the collection on the first write (a read never creates one); for Milvus
        Lite, this is also what creates the ``.db`` file (the connection opens here).
        ``fine_bits`` (the first write's fine codes, else the store's): the new collection
        keeps fine codes of that length, in its companions (:mod:`.fine`). True when this call
        created it (False: it existed, or another program created it meanwhile)."""
        s = self.store
        if s.exists or self._created_meanwhile(fine_bits or s.fine_bits):
            return False
        fine_bits = fine_bits or s.fine_bits
        made_companions = False
        index_type, index_params = s._index
        policy = AUTO_INDEX if index_type in (None, AUTO_INDEX) and not s.is_lite else None
        concrete = "BIN_FLAT" if index_type in (None, AUTO_INDEX) else index_type
        try:
            if fine_bits is not None:  # companions first: no main row without its mirror row
                s.fine_bits = fine_bits
                fine.create(s._conn, s.collection, s.bits, fine_bits, s.scene_test is not None)
                made_companions = True
            index = s._conn.client.prepare_index_params()
            index.add_index(field_name="code", index_type=concrete, metric_type="HAMMING",
                            params=server.build_params(concrete, index_params))
            s._conn.call("create_collection", s.collection,
                         schema=make_schema(s.bits, s.encoder, policy, s.fine_bits, s.scene_test),
                         index_params=index, consistency_level="Strong",
                         what=f"creating collection {s.collection!r}")
        except Exception:  # e.g. index parameters the server refuses: nothing half-made stays
            self._drop_half_made(made_companions)
            raise
        s.exists = True
        s.has_place = True
        s.index_policy = policy
        log.info("created collection %s (%d bits, fine %s, index %s) at %s", s.collection,
                 s.bits, s.fine_bits, policy or concrete, s.display_uri)
        return True

    def _drop_half_made(self, made_companions: bool) -> None:
        """Drop what a failed creation left: the collection without its index (it could not be
        loaded: every later run failed until ``rsir drop``), and the companions this call made
        when no main collection stands beside them. A collection with its index is complete
        (another program may have made it meanwhile) and is left alone."""
        s = self.store
        try:
            main = s._conn.call("has_collection", s.collection, what="cleaning up")
            if main and not s._conn.call("list_indexes", s.collection, what="cleaning up"):
                s._conn.call("drop_collection", s.collection, what="cleaning up")
                main = False
            if made_companions and not main:
                fine.drop(s._conn, s.collection)
        except Exception:  # the creation's own error is the one to report
            log.debug("could not drop the half-made collection %s", s.collection, exc_info=True)

    def _created_meanwhile(self, fine_bits: int | None) -> bool:
        """Whether another program created the collection since this store was opened (then
        it is opened as it is, never made again: its companions hold that program's fine
        codes). A write whose fine codes do not fit what it keeps is refused, nothing written.

        Asked of the opened connection, also when the Milvus Lite file was missing when this
        store was made: another program may have created it since (two ``rsir index`` runs
        into one new file, one after the other), and its companions were then taken for a
        crashed run's orphans and dropped with that program's fine codes."""
        from .opening import open_existing

        s = self.store
        if not s._conn.call("has_collection", s.collection,
                            what=f"opening collection {s.collection!r}"):
            return False
        s.bits, s.encoder = open_existing(s, s.bits, s.encoder)
        s.exists = True
        if (fine_bits is None) != (s.fine_bits is None) or (
                fine_bits is not None and fine_bits != s.fine_bits):
            raise CollectionMismatchError(
                f"collection {s.collection!r} was created by another program meanwhile, with "
                f"{s.fine_bits or 'no'}-bit fine codes (this write has {fine_bits or 'none'}); "
                f"nothing was written: open it again and retry")
        return True

    def columns(self, ids: Any, codes: Any, labels: Any = None, paths: Any = None,
                metadata: Any = None, encoder: Mapping[str, Any] | None = None, *,
                footprints: Any = None, times: Any = None, fine: Any = None) -> rows.Columns:
        """A write's checked columns (and the bundle identity checked against the store's).

        Every write of a collection with place fields fills them: from ``footprints``/``times``
        (one value per item, or ``None``), else from each item's metadata (:mod:`.place`).
        Giving either to a collection made before place fields existed raises
        :class:`~rsir_sdk.errors.CollectionMismatchError`. ``fine``: the items' fine codes
        (:meth:`fine_codes` says what is required and what is dropped)."""
        s = self.store
        if encoder is not None and s.encoder is not None:
            check_same_encoder(s.encoder, encoder, s.collection)
        if not s.has_place and (footprints is not None or times is not None):
            raise place.refuse_old(s.collection, s.display_uri, "store footprints or times")
        cols = rows.build_columns(ids, codes, s.bits, labels, paths, metadata,
                                  (footprints, times) if s.has_place else None)
        cols.fine = self.fine_codes(fine, len(cols))
        return cols

    def fine_codes(self, codes: Any, n: int) -> np.ndarray | None:
        """A write's fine codes, checked: packed ``uint8 (n, fine_bits/8)``.

        A collection that keeps fine codes refuses a write without them
        (:class:`~rsir_sdk.errors.InvalidInputError`); one that keeps none (made before them,
        or without them) drops them with one warning per store, so old collections keep
        working; a new collection keeps them at the length of the first write's (or
        ``fine_bits``). Wrong length: :class:`~rsir_sdk.errors.CodeLengthError`."""
        s = self.store
        if n == 0:
            return None
        if codes is None:
            if s.fine_bits is not None:
                raise InvalidInputError(
                    f"collection {s.collection!r} keeps {s.fine_bits}-bit fine codes: pass fine= "
                    f"with one per item (uint8 (n, {s.fine_bits // 8}); Encoder.encode_both)")
            return None
        if s.exists and s.fine_bits is None:
            if not s._fine_dropped:
                s._fine_dropped = True
                warnings.warn(
                    f"collection {s.collection!r} at {s.display_uri} keeps no fine codes (made "
                    f"without them): they are dropped, and searches rank by the retrieval code "
                    f"alone; to keep them, rebuild it (rsir drop, then index again)",
                    UserWarning, stacklevel=4)
            return None
        packed = as_packed(codes, s.fine_bits)
        if packed.shape[0] != n:
            raise InvalidInputError(f"{n} items but {packed.shape[0]} fine codes")
        return packed

    def _companions(self, cols: rows.Columns, start: int, end: int) -> None:
        """The mirror and codebook rows of ``cols[start:end]``, written before the main rows."""
        s = self.store
        if cols.fine is not None and s.fine_bits is not None:
            fine.write(s._conn, s.collection, cols, start, end, s.scene_test is not None)

    def _fine_width(self, cols: rows.Columns) -> int | None:
        return None if cols.fine is None else int(cols.fine.shape[1]) * 8

    def upsert(self, cols: rows.Columns, batch_size: int) -> int:
        """Insert or replace the rows of ``cols`` by id, in requests of bounded size."""
        size = values.positive_int(batch_size, "batch_size")
        if not len(cols):
            return 0
        self.ensure_created(self._fine_width(cols))
        name, conn = self.store.collection, self.store._conn
        for start, end in rows.spans(cols.sizes, min(size, rows.MAX_BATCH_ROWS)):
            try:
                self._companions(cols, start, end)
                conn.write_columns("upsert", name, cols.lists(start, end),
                                   what=f"upsert into {name!r}")
            except StoreError as exc:
                raise StoreError(
                    f"{exc} (after {start} of {len(cols)} rows were written; re-running the "
                    f"same call is safe: upsert is idempotent)"
                ) from None
        return len(cols)

    def insert(self, cols: rows.Columns, batch_size: int) -> int:
        """Add rows whose ids are new; a failed request is written again as an upsert."""
        size = values.positive_int(batch_size, "batch_size")
        if not len(cols):
            return 0
        self.ensure_created(self._fine_width(cols))
        name, conn = self.store.collection, self.store._conn
        for start, end in rows.spans(cols.sizes, min(size, rows.MAX_BATCH_ROWS)):
            data = cols.lists(start, end)
            self._companions(cols, start, end)  # upserts: a retry never duplicates them
            try:
                conn.write_columns("insert", name, data, what=f"insert into {name!r}")
            except StoreError as exc:
                log.info("insert into %s failed (%s); writing the batch as an upsert", name, exc)
                try:
                    conn.write_columns("upsert", name, data, what=f"upsert into {name!r}")
                except StoreError as again:
                    raise StoreError(
                        f"{again} (after {start} of {len(cols)} rows were written; the rows "
                        f"written are complete: re-running skips them)"
                    ) from None
        return len(cols)

    def bulk_insert(self, cols: rows.Columns, staging_dir: str | os.PathLike,
                    options: BulkOptions, progress: Any = None) -> dict[str, Any]:
        """Load new rows through Milvus' bulk import (:mod:`.bulk`), then prepare for search."""
        from . import bulk

        self.ensure_created(self._fine_width(cols))
        out = bulk.load_columns(self.store, cols, staging_dir,
                                skip_existing=options.skip_existing,
                                chunk_rows=options.chunk_rows, timeout=options.timeout,
                                progress=progress)
        if options.prepare:
            out["prepare"] = self.store.prepare_for_search(timeout=options.timeout,
                                                           progress=progress)
        return out


    def delete(self, ids: Any) -> int:
        """:meth:`~.collection.MilvusCodeStore.delete`: the fine-code mirror rows first, for
        every id asked (present in the main collection or not), so a delete retried after one
        that failed half way removes the mirror rows it left; then the main rows."""
        s = self.store
        asked = values.lookup_ids(ids)
        pks = [keys.digest(i) for i in reads.by_pk(s, asked, ["pk", "id"])]
        if s.fine_bits is not None and s.exists:
            fine.delete(s._conn, s.collection, sorted({keys.digest(i) for i in asked}))
        for start in range(0, len(pks), PK_CHUNK):
            s._conn.call("delete", s.collection,
                         filter=keys.in_list("pk", pks[start : start + PK_CHUNK]),
                         what=f"delete from {s.collection!r}")
        if pks:
            s._conn.after_delete()
        return len(pks)
