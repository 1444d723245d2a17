"""One retrieval API, two transports: :class:`RetrievalAPI`.

:class:`~rsir_sdk.Retriever` (in process: a bundle's encoder and a Milvus collection) and
:class:`~rsir_sdk.RemoteRetriever` (the same verbs against ``rsir serve`` over HTTP) both
satisfy this :class:`typing.Protocol`: the same method names, parameters, return types
(:class:`~rsir_sdk.hits.Hit`, :class:`~rsir_sdk.hits.StoredItem`,
:class:`~rsir_sdk.ingest.IngestSummary`) and typed errors (:mod:`rsir_sdk.errors`). Code written
against it runs unchanged on a laptop's Milvus Lite file and against a central service;
``tests/test_api_parity.py`` runs one scenario through both and compares the results.

>>> from rsir_sdk import RetrievalAPI, Retriever
>>> def nearest_label(r: RetrievalAPI, image) -> str:
...     return r.search(image, k=1)[0].label
>>> r = Retriever("bundle/", uri="./rsir.db", collection="scenes")       # doctest: +SKIP
>>> isinstance(r, RetrievalAPI), nearest_label(r, "query.jpg")           # doctest: +SKIP
(True, 'Forest')

Filters (``filter=``): a dict (``{"label": "Forest", "sensor": "S2"}``; a list value means "any
of"; other keys are metadata keys) or a Milvus expression string over the collection's fields.
Both transports check them with the same function (:func:`rsir_sdk.store.keys.build_filter`)
before any work; ``rsir serve`` honours expression strings unless it runs with
``--no-expressions`` (then it refuses them with ``InvalidRequestError``, a ``ValueError``).

Where the transports differ, by necessity: ``RemoteRetriever.index`` takes a path on the service
(inside its archive root, ``rsir serve --allow-index``) and calls ``progress`` once, at the end;
``prepare_for_search`` over HTTP takes ``timeout`` only; ``info()`` has :data:`INFO_KEYS` on
both (the local one adds ``uri``, the remote one the service's limits and version).

Place and period (issue 22, docs/geo.md): ``bbox``, ``near`` and ``time`` on every search verb
and ``count``, ``footprints``/``times`` on ``add_images``/``add_codes``, and each
:class:`~rsir_sdk.hits.Hit`'s ``footprint`` and ``time``, alike on both transports.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .hits import Hit, StoredItem

if TYPE_CHECKING:  # for annotations only: the protocol itself stays light
    from .archive import ArchiveListing
    from .failures import FailureReport
    from .ingest import IngestProgress, IngestSummary
    from .options import IngestOptions
    from .store import PrepareProgress

#: a search or count filter: a dict of field/metadata values, a Milvus expression, or none
Filter = str | Mapping[str, Any] | None
#: a place or period value: ``bbox`` ``(w, s, e, n)`` / ``"w,s,e,n"``, ``near`` ``(lon, lat,
#: metres)`` / ``"lon,lat,metres"``, ``time`` ``(start, end)`` / ``"start/end"`` (ISO 8601), or none
Place = Any

__all__ = ["INFO_KEYS", "Filter", "Place", "RetrievalAPI"]

#: keys ``info()`` has on both transports
INFO_KEYS = ("method", "bits", "encoder_id", "collection", "exists", "raster_rule",
             "archive_root", "count", "providers")


@runtime_checkable
class RetrievalAPI(Protocol):
    """The verbs every retriever offers, local or remote (see the module docstring)."""

    @property
    def collection(self) -> str:
        """The collection's name."""
        ...

    def search(self, img: Any, k: int = 10, filter: Filter = None,
               radius: int | None = None, *, bbox: Place = None, near: Place = None,
               time: Place = None, mode: str = "default") -> list[Hit]:
        """Hamming top-``k`` for one image (path, bytes, file object, PIL image, array or URL);
        ``bbox``/``near``/``time``: only items of that place and period (docs/geo.md);
        ``mode``: ``"default"`` (near-duplicates by fine code first, then retrieval code, then
        fine code, then digest) or
        ``"appearance"`` (fine code alone; :data:`rsir_sdk.hits.SEARCH_MODES`)."""
        ...

    def search_batch(self, imgs: Sequence[Any], k: int = 10, filter: Filter = None,
                     radius: int | None = None, batch_size: int | None = None, *,
                     bbox: Place = None, near: Place = None,
                     time: Place = None, mode: str = "default") -> list[list[Hit]]:
        """Top-``k`` for each image, in order."""
        ...

    def search_codes(self, codes: np.ndarray | bytes, k: int = 10, filter: Filter = None,
                     radius: int | None = None, *, bbox: Place = None, near: Place = None,
                     time: Place = None, fine: np.ndarray | bytes | None = None,
                     mode: str = "default") -> list[list[Hit]]:
        """Top-``k`` for packed codes ``uint8 (n, bits/8)`` made elsewhere (an edge device);
        ``fine``: their fine codes ``uint8 (n, fine_bits/8)`` from the same forward pass
        (ranks each tie group by appearance; required by ``mode="appearance"``)."""
        ...

    def range_search(self, img: Any, radius: int, filter: Filter = None, *,
                     bbox: Place = None, near: Place = None, time: Place = None,
                     mode: str = "default") -> list[Hit]:
        """Every item within Hamming distance ``<= radius`` of one image (in the appearance
        mode, of its fine code)."""
        ...

    def add_images(self, images: Sequence[Any], ids: Sequence[str] | None = None,
                   labels: Sequence[str] | None = None,
                   metadata: Sequence[Mapping[str, Any] | None] | None = None,
                   paths: Sequence[str] | None = None, batch_size: int | None = None,
                   footprints: Sequence[Any] | None = None,
                   times: Sequence[Any] | None = None) -> int:
        """Encode images and upsert their codes (with each one's footprint and time when
        given); how many were written."""
        ...

    def add_codes(self, codes: np.ndarray | bytes, ids: Sequence[str],
                  labels: Sequence[str] | None = None, paths: Sequence[str] | None = None,
                  metadata: Sequence[Mapping[str, Any] | None] | None = None,
                  footprints: Sequence[Any] | None = None,
                  times: Sequence[Any] | None = None,
                  fine: np.ndarray | bytes | None = None) -> int:
        """Upsert packed codes as they are (with their fine codes when given); how many were
        written."""
        ...

    def add_learned_codes(self) -> int:
        """Put the bundle's learned database codes (AHCL's V) in as learned."""
        ...

    def index(self, archive: str | os.PathLike | ArchiveListing,
              options: IngestOptions | None = None, *,
              report: str | os.PathLike | FailureReport | None = None,
              progress: Callable[[IngestProgress], None] | None = None,
              on_prepare: Callable[[PrepareProgress], None] | None = None,
              **overrides: Any) -> IngestSummary:
        """Encode every image of an archive into the collection (resumable)."""
        ...

    def prepare_for_search(self, *, timeout: float | None = 3600.0,
                           progress: Callable[[Any], None] | None = None) -> dict[str, Any]:
        """Leave the collection ready to search at full speed; what was done (``progress``:
        in process only)."""
        ...

    def duplicates(self, radius: int | None = None, filter: Filter = None, *,
                   bbox: Place = None, near: Place = None,
                   time: Place = None) -> list[list[str]]:
        """Groups of near-identical items: ids whose fine codes lie within ``radius`` of each
        other (linked transitively), largest group first; ``None``: the default radius."""
        ...

    def delete(self, ids: Sequence[str]) -> int:
        """Delete items by id; how many existed."""
        ...

    def get(self, ids: Sequence[str]) -> list[StoredItem]:
        """Stored items by id, in the order asked (missing ids left out)."""
        ...

    def count(self, filter: Filter = None, *, bbox: Place = None, near: Place = None,
              time: Place = None) -> int:
        """Number of items (matching ``filter`` and the place and period)."""
        ...

    def info(self) -> dict[str, Any]:
        """What is served: at least the keys of :data:`INFO_KEYS`."""
        ...

    def close(self) -> None:
        """Release connections (the collection and any service keep running)."""
        ...

    def __enter__(self) -> Any:
        """``with`` a retriever: closed at the end of the block."""
        ...

    def __exit__(self, *exc: Any) -> None:
        ...
