"""``Retriever``: a bundle's encoder plus a Milvus code store, searched by image.

>>> from rsir_sdk import Retriever
>>> r = Retriever("bundle/", uri="./rsir.db", collection="scenes")   # doctest: +SKIP
>>> r.add_learned_codes()            # AHCL: the bundle's learned database codes, as learned
>>> hits = r.search("query.jpg", k=5)                                  # doctest: +SKIP
>>> hits[0].id, hits[0].distance, hits[0].label                        # doctest: +SKIP
('forest/0042.jpg', 3, 'forest')
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from .bundle import Bundle
from .codes import as_packed
from .encoder import Encoder
from .images import ImageSource, describe_source
from .store import MAX_TOPK, MilvusCodeStore, StoreHit

log = logging.getLogger(__name__)


#: one search result (``id``, ``distance`` as an int, ``label``, ``path``, ``metadata``), sorted by
#: distance then id; the same class the store returns
Hit = StoreHit


class Retriever:
    """Search a Milvus collection of binary codes with images, using a model bundle's encoder.

    ``uri``/``token`` are passed to pymilvus as they are: a ``.db`` file path is Milvus Lite,
    ``http://host:19530`` a server. The collection is created on first use with the bundle's
    bit length and encoder identity, and refuses codes from any other encoder.

    >>> r = Retriever("bundle/", uri="./rsir.db", collection="scenes")     # doctest: +SKIP
    >>> r.add_images(["a.jpg", "b.jpg"], ids=["a", "b"], labels=["forest", "river"])
    >>> r.search("query.jpg", k=2)                                          # doctest: +SKIP
    [Hit(id='a', distance=4, label='forest', path='a.jpg', metadata={}), ...]
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike,
        uri: str = "./rsir.db",
        collection: str = "rsir",
        token: str | None = None,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        batch_size: int = 32,
        index_type: str | None = None,
        index_params: Mapping[str, Any] | None = None,
        search_params: Mapping[str, Any] | None = None,
    ):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.encoder = Encoder(
            self.bundle, providers=providers, threads=threads, batch_size=batch_size
        )
        self.store = MilvusCodeStore(
            uri,
            collection,
            bits=self.bundle.bits,
            token=token,
            encoder=self.bundle.identity(),
            index_type=index_type,
            index_params=index_params,
            search_params=search_params,
        )
        if self.store.encoder is None:
            log.warning(
                "collection %r records no encoder: codes from %s are accepted unchecked",
                collection,
                self.bundle.encoder_id,
            )

    @classmethod
    def from_bundle(
        cls, bundle: str | os.PathLike, uri: str = "./rsir.db", collection: str | None = None, **kw
    ) -> "Retriever":
        """Open a Retriever; the collection name defaults to ``<method>_<bits>_<encoder_id>``.

        >>> r = Retriever.from_bundle("bundle/", uri="./rsir.db")   # doctest: +SKIP
        """
        b = Bundle.load(bundle)
        name = collection or f"{b.method}_{b.bits}_{b.encoder_id}"
        return cls(b, uri=uri, collection=name, **kw)

    # ----------------------------------------------------------------- search
    def search(
        self,
        img: ImageSource,
        k: int = 10,
        filter: str | Mapping[str, Any] | None = None,
        radius: int | None = None,
    ) -> list[Hit]:
        """Hamming top-``k`` for one image (path, bytes, file, PIL, array or URL).

        ``filter``: a Milvus expression (``'label == "forest"'``) or a dict
        (``{"label": "forest", "sensor": "S2"}``; non-column keys are metadata keys).
        ``radius``: keep only hits at distance ``<= radius``.

        >>> r.search("scene.tif", k=5, filter={"label": "forest"})   # doctest: +SKIP
        """
        return self.search_codes(self.encoder.encode([img]), k, filter, radius)[0]

    def search_batch(
        self,
        imgs: Sequence[ImageSource],
        k: int = 10,
        filter: str | Mapping[str, Any] | None = None,
        radius: int | None = None,
        batch_size: int | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` for each of several images: one list of hits per image, in order.

        >>> r.search_batch(["a.jpg", "b.jpg"], k=3)                  # doctest: +SKIP
        """
        return self.search_codes(self.encoder.encode(list(imgs), batch_size), k, filter, radius)

    def search_codes(
        self,
        codes: np.ndarray | bytes,
        k: int = 10,
        filter: str | Mapping[str, Any] | None = None,
        radius: int | None = None,
    ) -> list[list[Hit]]:
        """Search with packed codes made elsewhere (an edge device running the same encoder).

        ``codes``: ``uint8 (n, bits/8)`` or the raw bytes of one code; one hit list per code.

        >>> r.search_codes(edge_bytes, k=10)                          # doctest: +SKIP
        """
        packed = as_packed(codes, self.bundle.bits)
        return self.store.search(packed, k, filter, radius)

    def range_search(
        self, img: ImageSource, radius: int, filter: str | Mapping[str, Any] | None = None
    ) -> list[Hit]:
        """Every item within Hamming distance ``<= radius`` of one image (up to 16384)."""
        codes = self.encoder.encode([img])
        return self.store.range_search(codes, radius, filter, MAX_TOPK)[0]

    # ----------------------------------------------------------------- writes
    def add_images(
        self,
        images: Sequence[ImageSource],
        ids: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        paths: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> int:
        """Encode images and upsert their codes; returns how many were written.

        Ids default to the path of each source (only when every source is a path). Every
        image is encoded before anything is written, so one bad image changes nothing.

        >>> r.add_images(["a.jpg"], ids=["a"], labels=["forest"], metadata=[{"year": 2020}])
        1
        """
        images = list(images)
        if paths is None:
            paths = [
                str(x) if isinstance(x, (str, os.PathLike)) else "" for x in images
            ]
        if ids is None:
            if not all(paths):
                raise ValueError(
                    "ids are required when some images are not file paths "
                    f"(e.g. {describe_source(next(x for x, p in zip(images, paths) if not p))})"
                )
            ids = list(paths)
        if len(ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(ids)} ids")
        codes = self.encoder.encode(images, batch_size)
        return self.store.upsert(
            ids, codes, labels, paths, metadata, encoder=self.bundle.identity()
        )

    def add_codes(
        self,
        codes: np.ndarray,
        ids: Sequence[str],
        labels: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> int:
        """Upsert packed codes as they are (learned database codes, or codes made elsewhere).

        >>> db = r.bundle.load_database()                              # doctest: +SKIP
        >>> r.add_codes(db.codes, db.ids, db.labels, db.paths)         # doctest: +SKIP
        """
        return self.store.upsert(
            ids, codes, labels, paths, metadata, encoder=self.bundle.identity()
        )

    def add_learned_codes(self) -> int:
        """Put the bundle's learned database codes (AHCL's V) into the collection as learned."""
        db = self.bundle.load_database()
        meta = [{"source": "learned"}] * len(db)
        return self.add_codes(db.codes, db.ids, db.labels, db.paths, meta)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete items by id; returns how many existed."""
        return self.store.delete(ids)

    def count(self) -> int:
        """Number of items in the collection."""
        return self.store.count()

    def close(self) -> None:
        """Release the collection (for Milvus Lite, the database file)."""
        self.store.close()

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Retriever(method={self.bundle.method!r}, bits={self.bundle.bits}, "
            f"collection={self.store.collection!r}, uri={self.store.uri!r})"
        )
