"""``RemoteRetriever``: the :class:`~rsir_sdk.Retriever` verbs against ``rsir serve`` over HTTP.

>>> from rsir_sdk.serve.client import RemoteRetriever
>>> r = RemoteRetriever("http://127.0.0.1:8000", token="read-token")          # doctest: +SKIP
>>> r.search("query.jpg", k=5)[0]                                              # doctest: +SKIP
Hit(id='Forest/Forest_1001.jpg', distance=0, label='Forest', path='...', metadata={})

Both classes satisfy :class:`rsir_sdk.RetrievalAPI`: the same methods and parameters, the same
:class:`~rsir_sdk.hits.Hit` and :class:`~rsir_sdk.hits.StoredItem` objects (read back with
:func:`~rsir_sdk.hits.hit_from_json`), and the same exception classes. Arguments are checked here
with the very functions the local store uses (:mod:`rsir_sdk.store.values`,
:func:`rsir_sdk.store.keys.build_filter`), so a bad ``k``, ``radius``, filter or id list raises
:class:`~rsir_sdk.errors.InvalidInputError` before any request; an error the service finds comes
back as the class its JSON ``error`` kind names (see :mod:`rsir_sdk.serve.errors`). Filters are
sent as JSON: a dict, or a Milvus expression string, which the service honours unless it was
started with ``--no-expressions``. Place and period (``bbox``, ``near``, ``time``, and
``footprints``/``times`` on writes) are parsed here by :mod:`rsir_sdk.geo` and sent as exact
numbers (:mod:`rsir_sdk.serve.geo_wire`).

**The edge path**: given a local ``bundle`` (the one the service runs, e.g. an int8 one), images
are encoded on this device with :class:`~rsir_sdk.Encoder` and only the packed codes travel
(``bits/8`` bytes per image instead of the image file, plus ``fine_bits/8`` for the fine code
when the bundle has one: 8 + 40 = 48 bytes for a 64-bit code and the default 320-bit fine code,
both from one forward pass); the request names the encoder so that a service filled by another encoder
refuses the codes (:class:`CollectionMismatchError`). Without a bundle, image files are
uploaded and the service encodes them.

Search modes (``mode=``, :data:`rsir_sdk.hits.SEARCH_MODES`) travel as the ``mode`` parameter;
:meth:`RemoteRetriever.duplicates` asks ``POST /v1/duplicates``.

Connection errors, timeouts and 503 answers are retried ``HttpOptions.retries`` times with
exponential backoff (``backoff * 2**attempt``, at most ``max_backoff`` s; a 503's
``Retry-After`` is honoured up to ``max_backoff``). Writes are upserts by id, so retrying them is
safe.

This module holds the verbs: what each one checks, sends and reads back. The requests, retries
and error mapping are :mod:`rsir_sdk.serve.transport` (:class:`HttpOptions` lives there and is
re-exported here); the small wire conversions (filters, upload parts, the index summary) are
:mod:`rsir_sdk.serve.wire`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..call_checks import (
    check_bearer_token,
    check_range_radius,
    check_search,
    image_list,
)
from ..codes import as_packed
from ..errors import (
    CollectionNotFoundError,
    InvalidInputError,
    StoreError,
)
from ..hits import Hit, StoredItem, hit_from_json, item_from_json
from ..redact import redact_uri
from ..store import values as store_values
from . import client_search, client_writes
from .geo_wire import geo_to_wire
from .transport import RETRY_STATUS as RETRY_STATUS  # re-exported: it was defined here
from .transport import HttpOptions, HttpTransport
from .wire import (
    Filter,
    adopt_served_encoding,
    chunks,
    finish_index,
    image_file,
    is_url,
    json_search_body,
    search_params,
    service_url,
    summary_from_json,
    upload_parts,
    wire_filter,
)

if TYPE_CHECKING:
    from ..archive import ArchiveListing
    from ..failures import FailureReport
    from ..ingest import IngestProgress, IngestSummary
    from ..options import IngestOptions
    from ..store import PrepareProgress

ENCODER_HEADER = "X-Rsir-Encoder-Id"

__all__ = ["HttpOptions", "RemoteRetriever"]


class RemoteRetriever:
    """Search, add, index, get, delete and count through a running ``rsir serve``.

    ``url``: the service's base URL. ``token``: its bearer token (read or write).
    ``bundle``: a local bundle (path or :class:`~rsir_sdk.Bundle`) to encode on this device and
    send codes only (``providers``/``threads`` as for :class:`~rsir_sdk.Encoder`).
    ``collection``: if given, the service must serve that collection
    (:class:`~rsir_sdk.errors.CollectionNotFoundError` otherwise). ``http``: the
    :class:`HttpOptions`; ``timeout`` and ``retries`` are shortcuts for its two common fields.
    ``encoder_id``: without a bundle, the encoder that made the codes this client sends (a
    device encoding on its own), sent with them so the service refuses another model's codes
    (a bundle's own id is sent without it).
    """

    def __init__(self, url: str, token: str | None = None, bundle: Any = None, *,
                 collection: str | None = None, http: HttpOptions | None = None,
                 timeout: float | None = None, retries: int | None = None,
                 providers: Sequence[str] | None = None, threads: int | None = None,
                 encoder_id: str | None = None):
        if http is not None and not isinstance(http, HttpOptions):
            raise InvalidInputError(f"http must be an HttpOptions value, e.g. "
                                    f"HttpOptions(timeout=30), got {type(http).__name__}")
        opts = http or HttpOptions()
        if timeout is not None:
            opts = dataclasses.replace(opts, timeout=timeout)
        if retries is not None:
            opts = dataclasses.replace(opts, retries=retries)
        self.http = opts
        address = service_url(url)
        #: the service's base URL as shown (in messages and ``repr``): credentials in it masked
        self.url = redact_uri(address)
        check_bearer_token(token, "the token")
        self._transport = HttpTransport(address, token, opts)
        self._request = self._transport.request  # every verb's one way to ask the service
        self._info: dict[str, Any] | None = None
        self.encoder = None
        if encoder_id is not None and not (isinstance(encoder_id, str) and encoder_id.strip()
                                           and encoder_id.isascii() and encoder_id.isprintable()):
            raise InvalidInputError(f"encoder_id must be an encoder's id (as rsir info shows "
                                    f"it), got {encoder_id!r:.80}")
        self._encoder_id = encoder_id
        try:
            if bundle is not None:
                from ..encoder import Encoder

                self.encoder = Encoder(bundle, providers=providers, threads=threads)
                if encoder_id not in (None, self.encoder.bundle.encoder_id):
                    raise InvalidInputError(f"encoder_id {encoder_id!r} is not the bundle's "
                                            f"({self.encoder.bundle.encoder_id!r})")
                self._check_encoder()
            if collection is not None and self.collection != collection:
                raise CollectionNotFoundError(f"the service at {self.url} serves collection "
                                              f"{self.collection!r}, not {collection!r}")
        except BaseException:
            self.close()
            raise

    @property
    def retries(self) -> int:
        """Extra attempts after a connection error, timeout or 503."""
        return self.http.retries

    @property
    def bytes_sent(self) -> int:
        """Bytes of request bodies sent so far (codes vs uploads)."""
        return self._transport.bytes_sent

    @bytes_sent.setter
    def bytes_sent(self, value: int) -> None:
        self._transport.bytes_sent = value

    @property
    def last_request_bytes(self) -> int:
        """Bytes of the last request's body."""
        return self._transport.last_request_bytes

    @last_request_bytes.setter
    def last_request_bytes(self, value: int) -> None:
        self._transport.last_request_bytes = value

    # ----------------------------------------------------------------- service
    def info(self) -> dict[str, Any]:
        """What the service serves: the keys of :meth:`rsir_sdk.Retriever.info` but ``uri``
        (:data:`rsir_sdk.api.INFO_KEYS`), plus the encoder identity, classes, limits, version."""
        info = self._request("GET", "/v1/info")
        self._info = info
        return info

    @property
    def collection(self) -> str:
        """The name of the collection the service serves."""
        if self._info is None:
            self.info()
        assert self._info is not None
        return str(self._info["collection"])

    def ready(self) -> bool:
        """Whether the service takes work now (``GET /readyz``: its store answers and it is not
        shutting down); one attempt, no retries; ``False`` when it cannot be reached."""
        return self._transport.answers_ok("/readyz")

    def _limits(self) -> dict[str, Any]:
        if self._info is None:
            self.info()
        assert self._info is not None
        return self._info["limits"]

    def _check_encoder(self) -> None:
        assert self.encoder is not None
        adopt_served_encoding(self.info(), self.encoder)

    def _encode(self, images: list[Any], batch_size: int | None = None,
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(codes, fine codes)`` of images encoded here: both from one forward pass when the
        bundle has a fine code (``fine`` None otherwise)."""
        assert self.encoder is not None
        if self.encoder.fine_bits is not None:
            both = self.encoder.encode_both(images, batch_size)
            return both.codes, both.fine
        codes = self.encoder.encode(images, batch_size)
        assert isinstance(codes, np.ndarray)
        return codes, None

    def _encoder_header(self) -> dict[str, str]:
        given = self.encoder.bundle.encoder_id if self.encoder else self._encoder_id
        return {ENCODER_HEADER: given} if given else {}

    @staticmethod
    def _hits(rows: Sequence[Mapping[str, Any]]) -> list[Hit]:
        return [hit_from_json(h) for h in rows]

    def _upload_size(self, batch_size: int | None) -> int:
        most = int(self._limits()["max_batch"])
        if batch_size is None:
            return most
        return min(most, store_values.positive_int(batch_size, "batch_size"))

    def _uploads(self, images: Sequence[Any], batch_size: int | None) -> Any:
        """The requests ``images`` are uploaded in: ``batch_size`` (at most the service's
        ``max_batch``) a request, and under its body limit (:func:`~.wire.upload_parts`)."""
        return upload_parts(images, self._upload_size(batch_size),
                            self._limits().get("max_upload_bytes"))

    # ----------------------------------------------------------------- search
    def search(self, img: Any, k: int = 10, filter: Filter = None, radius: int | None = None, *,
               bbox: Any = None, near: Any = None, time: Any = None,
               mode: str = "default") -> list[Hit]:
        """Hamming top-``k`` for one image (path, bytes, file object, PIL image, array or URL);
        ``bbox``, ``near``, ``time``: place and period; ``mode``: ``"default"`` or
        ``"appearance"``; as for :meth:`rsir_sdk.Retriever.search`."""
        check_search(k, filter, radius, (bbox, near, time))  # the local order of checks
        where = geo_to_wire(bbox, near, time)
        params = search_params(k, filter, radius, where, mode)
        if self.encoder is not None:
            codes, fine = self._encode([img])
            return self.search_codes(codes, k, filter, radius, **where, fine=fine, mode=mode)[0]
        if is_url(img):
            payload = self._request("POST", "/v1/search",
                                    json_body={"url": img, **json_search_body(params, filter, where)})
        else:
            name, data, mime = image_file(img)
            payload = self._request("POST", "/v1/search", params=params, content=data,
                                    headers={"Content-Type": mime})
        return self._hits(payload["hits"])

    def search_batch(self, imgs: Sequence[Any], k: int = 10, filter: Filter = None,
                     radius: int | None = None, batch_size: int | None = None, *,
                     bbox: Any = None, near: Any = None, time: Any = None,
                     mode: str = "default") -> list[list[Hit]]:
        """Top-``k`` for each image, in order. ``batch_size``: images per encoder call with a
        local bundle, else images per upload (at most the service's max batch)."""
        imgs = image_list(imgs, "use search(image)")
        check_search(k, filter, radius, (bbox, near, time))
        where = geo_to_wire(bbox, near, time)
        params = search_params(k, filter, radius, where, mode)
        if self.encoder is not None:
            codes, fine = self._encode(imgs, batch_size)
            return self.search_codes(codes, k, filter, radius, **where, fine=fine, mode=mode)
        out: list[list[Hit]] = []
        for upload in self._uploads(imgs, batch_size):
            if upload.urls:
                body = {"urls": upload.urls, **json_search_body(params, filter, where)}
                payload = self._request("POST", "/v1/search/batch", json_body=body)
            else:
                payload = self._request("POST", "/v1/search/batch", params=params,
                                        files=upload.files)
            out += [self._hits(r) for r in payload["results"]]
        return out

    def search_codes(self, codes: np.ndarray | bytes, k: int = 10, filter: Filter = None,
                     radius: int | None = None, *, bbox: Any = None, near: Any = None,
                     time: Any = None, fine: np.ndarray | bytes | None = None,
                     mode: str = "default") -> list[list[Hit]]:
        """Search packed codes ``uint8 (n, bits/8)`` (or one code's bytes): raw bytes travel.
        ``fine``: their fine codes ``uint8 (n, fine_bits/8)``, sent after each code (records of
        ``bits/8 + fine_bits/8`` bytes, ``fine=1``); required by ``mode="appearance"``."""
        check_search(k, filter, radius, (bbox, near, time))
        params = search_params(k, filter, radius, geo_to_wire(bbox, near, time), mode)
        return client_search.search_codes(self, codes, k, params, fine, mode)

    def _bits(self) -> int:
        """The code length codes are checked against before they are sent: the local bundle's,
        else the service's (so a wrong length reads as it does in process)."""
        if self.encoder is not None:
            return int(self.encoder.bits)
        if self._info is None:
            self.info()
        assert self._info is not None
        return int(self._info["bits"])

    def _fine(self, fine: np.ndarray | bytes | None, n: int) -> np.ndarray | None:
        """Fine codes given with ``n`` codes as ``uint8 (n, fine_bits/8)``, checked (None when
        not given)."""
        if fine is None:
            return None
        if self.encoder is not None:
            width = self.encoder.fine_bits
        else:  # the service's: a wrong width would be read as other records, not refused
            width = (self._info if self._info is not None else self.info()).get("fine_bits")
        rows = as_packed(fine, width, "fine codes")
        if len(rows) != n:
            raise InvalidInputError(f"{len(rows)} fine codes for {n} codes: give one per code")
        return rows

    def range_search(self, img: Any, radius: int, filter: Filter = None, *, bbox: Any = None,
                     near: Any = None, time: Any = None, mode: str = "default") -> list[Hit]:
        """Every item within ``radius`` of one image (in the place and period; in mode
        appearance, of its fine code); :class:`~rsir_sdk.errors.StoreError` when there are
        the service's max k or more (rather than a silent cut)."""
        check_range_radius(radius)
        check_search(1, filter, radius, (bbox, near, time))
        search_params(1, filter, radius, geo_to_wire(bbox, near, time), mode)
        most = int(self._limits()["max_k"])
        hits = self.search(img, k=most, filter=filter, radius=radius, bbox=bbox, near=near,
                           time=time, mode=mode)
        if len(hits) >= most:  # as the store refuses at its limit: no silent cut
            raise StoreError(f"the image has {most} or more items within radius {radius}, the "
                             f"most the service at {self.url} returns (its --max-k); lower the "
                             f"radius or add a filter")
        return hits

    # ----------------------------------------------------------------- writes
    def add_images(self, images: Sequence[Any], ids: Sequence[str] | None = None,
                   labels: Sequence[str] | None = None,
                   metadata: Sequence[Mapping[str, Any] | None] | None = None,
                   paths: Sequence[str] | None = None, batch_size: int | None = None,
                   footprints: Sequence[Any] | None = None,
                   times: Sequence[Any] | None = None) -> int:
        """Add images with their ids; returns how many were written.

        Ids default to the image paths when every image is a path, and paths to the sources
        that are paths (as with ``Retriever``: the paths as given, not as the service sees them).
        With a local bundle the images are encoded here (``batch_size`` per encoder call) and
        only codes are sent; otherwise ``batch_size`` images go per upload. ``footprints``
        (per item a ``(w, s, e, n)`` box, a ``(lon, lat)`` point, a
        :class:`~rsir_sdk.geo.Footprint` or None) and ``times`` (per item ISO 8601, epoch
        seconds or None) are checked here and stored as :meth:`rsir_sdk.Retriever.add_images`
        stores them. Uploads go the service's ``max_batch`` images a request, each request
        written whole or not at all: an error in a later request leaves the earlier ones
        written, and says how many (``.written`` on the error, and in its message).
        """
        return client_writes.add_images(self, images, ids, (labels, paths, metadata),
                                        (footprints, times), batch_size)

    def add_codes(self, codes: np.ndarray | bytes, ids: Sequence[str],
                  labels: Sequence[str] | None = None, paths: Sequence[str] | None = None,
                  metadata: Sequence[Mapping[str, Any] | None] | None = None,
                  footprints: Sequence[Any] | None = None,
                  times: Sequence[Any] | None = None,
                  fine: np.ndarray | bytes | None = None) -> int:
        """Upsert packed codes with their ids; returns how many were written (``footprints``,
        ``times``: as for :meth:`add_images`; ``fine``: their fine codes ``uint8 (n,
        fine_bits/8)``, required when the service's collection keeps fine codes)."""
        return client_writes.add_codes(self, codes, ids, (labels, paths, metadata),
                                       (footprints, times), fine)

    def add_learned_codes(self) -> int:
        """Have the service put its bundle's learned database codes (AHCL's V) in as learned
        (``POST /v1/learned``, write token); how many were written."""
        return int(self._request("POST", "/v1/learned", json_body={},
                                 timeout=self.http.index_timeout)["written"])

    def prepare_for_search(self, *, timeout: float | None = 3600.0,
                           progress: Callable[[Any], None] | None = None) -> dict[str, Any]:
        """Have the service leave its collection ready to search at full speed
        (``POST /v1/prepare``, write token); what was done. Only ``timeout`` (seconds) travels:
        a ``progress`` callback cannot (refused)."""
        if progress is not None:
            raise InvalidInputError("prepare_for_search over HTTP takes timeout only: a "
                                    "progress callback cannot travel")
        return dict(self._request("POST", "/v1/prepare", json_body={"timeout": timeout},
                                  timeout=self.http.index_timeout))

    def index(self, archive: str | os.PathLike | ArchiveListing,
              options: IngestOptions | None = None, *,
              report: str | os.PathLike | FailureReport | None = None,
              progress: Callable[[IngestProgress], None] | None = None,
              on_prepare: Callable[[PrepareProgress], None] | None = None,
              **overrides: Any) -> IngestSummary:
        """Have the service index an archive (a folder or CSV manifest) that lies inside its
        archive root (``POST /v1/index``, write token; the service must run with
        ``--allow-index``). ``archive`` is a path as the service sees it: relative to its archive
        root, or absolute inside it. Options as for :meth:`rsir_sdk.Retriever.index`, except
        those the service decides (``engine``, ``address``, ``bulk_dir``, ``ray``, ``prune``, a
        ``max_pixels`` above the service's ``--max-pixels``: refused with
        :class:`~rsir_sdk.errors.InvalidInputError`).

        One request runs the whole ingestion (``HttpOptions.index_timeout``): ``progress`` is
        called once, at the end; ``on_prepare`` is not called (the summary's ``prepare`` says
        what was done); ``report`` is written here from the summary's failures.
        """
        from ..archive import ArchiveListing
        from ..options import IngestOptions

        if isinstance(archive, ArchiveListing):
            raise InvalidInputError("RemoteRetriever.index takes the archive's path on the "
                                    "service, not a listing made here")
        opts = IngestOptions.build(options, overrides)
        payload = self._request("POST", "/v1/index", json_body={
            "archive": os.fspath(archive), "options": opts.to_json()},
            timeout=self.http.index_timeout)
        summary = summary_from_json(payload, self.url)
        finish_index(summary, report, progress)
        return summary

    def duplicates(self, radius: int | None = None, filter: Filter = None, *,
                   bbox: Any = None, near: Any = None, time: Any = None) -> list[list[str]]:
        """Groups of near-identical items: ids whose fine codes lie within ``radius`` of each
        other (linked transitively), ids sorted in each group, largest group first; ``None``:
        the service's default radius (``POST /v1/duplicates``; one request, under
        ``HttpOptions.index_timeout``: it reads the whole collection)."""
        body: dict[str, Any] = {**geo_to_wire(bbox, near, time)}
        radius = store_values.radius(radius)
        if radius is not None:
            body["radius"] = radius
        wire = wire_filter(filter)
        if wire is not None:
            body["filter"] = wire
        payload = self._request("POST", "/v1/duplicates", json_body=body,
                                timeout=self.http.index_timeout)
        return [[str(i) for i in group] for group in payload["groups"]]

    def delete(self, ids: Sequence[str]) -> int:
        """Delete items by id; returns how many existed. A delete that may have reached the
        service without an answer is not sent again (its count would miss what the first
        attempt deleted): :class:`~rsir_sdk.serve.errors.ServiceTimeoutError` says so, and
        deleting again is safe."""
        ids = store_values.lookup_ids(ids)
        if not ids:
            return 0
        return sum(int(self._request("POST", "/v1/items/delete", json_body={"ids": ids[part]},
                                     resend=False)["deleted"])
                   for part in chunks(len(ids), int(self._limits()["max_codes"])))

    # ----------------------------------------------------------------- reads
    def get(self, ids: Sequence[str]) -> list[StoredItem]:
        """Stored items by id, in the order asked; missing ids left out."""
        ids = store_values.lookup_ids(ids)
        out: list[StoredItem] = []
        for part in chunks(len(ids), int(self._limits()["max_codes"]) if ids else 1):
            payload = self._request("POST", "/v1/items/get", json_body={"ids": ids[part]})
            out += [item_from_json(it) for it in payload["items"]]
        return out

    def count(self, filter: Filter = None, *, bbox: Any = None, near: Any = None,
              time: Any = None) -> int:
        """Number of items (matching ``filter``: a dict or, where the service allows it, a
        Milvus expression string; and the place and period)."""
        wire = wire_filter(filter)
        params = {} if wire is None else {"filter": json.dumps(wire, ensure_ascii=False)}
        params.update({key: json.dumps(v) for key, v in geo_to_wire(bbox, near, time).items()})
        return int(self._request("GET", "/v1/count", params=params)["count"])

    def close(self) -> None:
        """Close the HTTP connections (the service keeps running)."""
        self._transport.close()

    def __reduce__(self) -> Any:
        raise TypeError("a RemoteRetriever holds open HTTP connections and cannot be pickled: "
                        "open one in each process (RemoteRetriever(url, token))")

    def __enter__(self) -> "RemoteRetriever":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        edge = f", bundle={self.encoder.bundle.encoder_id!r}" if self.encoder else ""
        return f"RemoteRetriever({self.url!r}{edge})"

