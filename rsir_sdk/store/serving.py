"""The serving and admin half of :class:`~.collection.MilvusCodeStore`: leave a server
collection ready to search (seal, index, load, warm; the index policy and its calibration),
describe the collection, create it empty, drop it.

Kept apart from the reads, writes and searches of :mod:`.collection` so that each module has
one job; :class:`StoreServing` is a base class of ``MilvusCodeStore`` and reads the attributes
its ``__init__`` sets (declared below for type checkers).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import CollectionNotFoundError, StoreError
from . import fine as companions
from . import opening, server
from .connect import Connection
from .schema import AUTO_INDEX, index_type_of
from .writes import Writer


class StoreServing:
    """Serving and admin verbs of a code store (see :class:`~.collection.MilvusCodeStore`)."""

    collection: str
    display_uri: str
    is_lite: bool
    exists: bool
    bits: int
    encoder: dict[str, Any] | None
    fine_bits: int | None
    index_policy: str | None
    search_params: dict[str, Any]
    writer: Writer
    _conn: Connection
    _recorded: dict[str, Any]

    def _require_exists(self) -> None:
        """Raise :class:`CollectionNotFoundError` (naming the collections there) for a read of
        a collection that was never written."""
        if not self.exists:
            raise CollectionNotFoundError(
                opening.missing_message(self, "it holds no collections: index an archive first"))

    # ----------------------------------------------------------------- serving
    @property
    def effective_search_params(self) -> dict[str, Any]:
        """The search parameters searches use: the caller's, else those recorded by
        :meth:`prepare_for_search` (e.g. the calibrated ``nprobe``)."""
        return dict(self.search_params or self._recorded.get("search_params") or {})

    def prepare_for_search(self, *, timeout: float | None = 3600.0,
                           progress: Any = None) -> dict[str, Any]:
        """Leave a server collection sealed, indexed, served and warm, so that the first search
        is as fast as the hundredth; with the ``auto`` index policy also choose the index and
        calibrate ``nprobe`` (:mod:`.server`). Call it after large writes (``rsir index`` does).

        ``progress`` gets :class:`~rsir_sdk.store.server.PrepareProgress` updates; ``timeout``
        (seconds) raises :class:`~rsir_sdk.errors.StoreError` saying what is still pending.
        Returns the seconds of each step and what was chosen. A no-op (``{}``) on Milvus Lite,
        which searches what it holds at once, and on a collection never written.
        """
        if self.is_lite or not self.exists:
            return {}
        if self.fine_bits is not None:
            companions.flush(self._conn, self.collection)
        out = server.prepare(self._conn, self.collection, policy=self.index_policy,
                             explicit_params=bool(self.search_params), timeout=timeout,
                             progress=progress)
        if self.fine_bits is not None:
            out["companions"] = companions.prepare(self._conn, self.collection, timeout, progress)
        self._recorded = server.properties(self._conn, self.collection)
        self.index_policy = self._recorded.get("policy", self.index_policy)
        return out

    def set_index(self, index_type: str, index_params: Mapping[str, Any] | None = None, *,
                  calibrate: bool = True, timeout: float | None = 3600.0,
                  progress: Any = None) -> dict[str, Any]:
        """Rebuild a server collection's index by hand (``BIN_FLAT``, ``BIN_IVF_FLAT`` with
        ``{"nlist": n}``, ``HNSW``); the ``auto`` policy no longer applies to it. For
        BIN_IVF_FLAT, ``calibrate`` records the ``nprobe`` that reaches recall@100 0.99. The
        collection is released while its index is rebuilt (searches fail meanwhile)."""
        self._require_exists()
        kind = index_type_of(index_type)
        if self.is_lite or kind in (None, AUTO_INDEX):
            raise StoreError("set_index needs a Milvus server and an index type (BIN_FLAT, "
                             "BIN_IVF_FLAT, HNSW); Milvus Lite has BIN_FLAT only")
        out = server.change_index(self._conn, self.collection, str(kind), dict(index_params or {}),
                                  calibrate_nprobe=calibrate, timeout=timeout, progress=progress)
        self._recorded = server.properties(self._conn, self.collection)
        self.index_policy = "fixed"
        return out

    def index_info(self) -> dict[str, Any]:
        """The code field's index: type, params, policy (``auto`` or fixed), row counts, the
        search parameters in use and how they were calibrated."""
        self._require_exists()
        return server.index_info(self._conn, self.collection, self.index_policy,
                                 self.effective_search_params, self._recorded)

    # ----------------------------------------------------------------- admin
    def create(self) -> None:
        """Create the collection now, empty, as the first write would (with the store's code
        and fine-code lengths); nothing when it exists. A read never creates one: this is for a
        caller that must answer reads of a new collection (``rsir serve --create``)."""
        self.writer.ensure_created()

    def drop(self) -> None:
        """Drop the whole collection and its fine-code companions (irreversible); a later write
        creates it afresh (keeping fine codes as the store's ``fine_bits`` or that write says)."""
        if self.exists:
            self._conn.call("drop_collection", self.collection,
                            what=f"dropping collection {self.collection!r}")
            self._conn.forget_collection(self.collection)
            companions.drop(self._conn, self.collection)
            self.exists = False
            self._recorded = {}
