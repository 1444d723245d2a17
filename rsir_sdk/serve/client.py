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
(``bits/8`` bytes per image instead of the image file); the request names the encoder so that
a service filled by another encoder refuses the codes (:class:`CollectionMismatchError`).
Without a bundle, image files are uploaded and the service encodes them.

Connection errors, timeouts and 503 answers are retried ``HttpOptions.retries`` times with
exponential backoff (``backoff * 2**attempt``, at most ``max_backoff`` s; a 503's
``Retry-After`` is honoured up to ``max_backoff``). Writes are upserts by id, so retrying them is
safe.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import httpx
import numpy as np

from ..codes import as_packed
from ..errors import CollectionMismatchError, CollectionNotFoundError, InvalidInputError
from ..hits import Hit, StoredItem, hit_from_json, item_from_json
from ..store import keys as store_keys
from ..store import values as store_values
from .errors import ServiceConnectionError, ServiceError, ServiceTimeoutError, exception_for
from .geo_wire import footprints_to_wire, geo_to_wire, times_to_wire

if TYPE_CHECKING:
    from ..archive import ArchiveListing
    from ..failures import FailureReport
    from ..ingest import IngestProgress, IngestSummary
    from ..options import IngestOptions
    from ..store import PrepareProgress

log = logging.getLogger(__name__)

ENCODER_HEADER = "X-Rsir-Encoder-Id"
RETRY_STATUS = 503
Filter = str | Mapping[str, Any] | None

__all__ = ["HttpOptions", "RemoteRetriever"]


@dataclass(frozen=True)
class HttpOptions:
    """How :class:`RemoteRetriever` talks HTTP, as one value.

    ``timeout``: seconds per request. ``retries``: extra attempts after a connection error,
    timeout or 503. ``backoff``/``max_backoff``: the first retry's delay and the longest one, in
    seconds. ``index_timeout``: seconds an ``index``/``prepare_for_search`` request may take.
    ``client``: an ``httpx.Client`` to use instead of a new one (its own timeout applies).
    """

    timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.2
    max_backoff: float = 5.0
    index_timeout: float = 3600.0
    client: httpx.Client | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("timeout", "backoff", "max_backoff", "index_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidInputError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise InvalidInputError(f"retries must be an integer >= 0, got {self.retries!r}")


class RemoteRetriever:
    """Search, add, index, get, delete and count through a running ``rsir serve``.

    ``url``: the service's base URL. ``token``: its bearer token (read or write).
    ``bundle``: a local bundle (path or :class:`~rsir_sdk.Bundle`) to encode on this device and
    send codes only (``providers``/``threads`` as for :class:`~rsir_sdk.Encoder`).
    ``collection``: if given, the service must serve that collection
    (:class:`~rsir_sdk.errors.CollectionNotFoundError` otherwise). ``http``: the
    :class:`HttpOptions`; ``timeout`` and ``retries`` are shortcuts for its two common fields.
    """

    def __init__(self, url: str, token: str | None = None, bundle: Any = None, *,
                 collection: str | None = None, http: HttpOptions | None = None,
                 timeout: float | None = None, retries: int | None = None,
                 providers: Sequence[str] | None = None, threads: int | None = None):
        opts = http or HttpOptions()
        if timeout is not None:
            opts = dataclasses.replace(opts, timeout=timeout)
        if retries is not None:
            opts = dataclasses.replace(opts, retries=retries)
        self.http = opts
        self.url = url.rstrip("/")
        self._own_client = self.http.client is None
        self._http = self.http.client or httpx.Client(timeout=self.http.timeout)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        #: bytes of request bodies sent, total and by the last request (codes vs uploads)
        self.bytes_sent = 0
        self.last_request_bytes = 0
        self._info: dict[str, Any] | None = None
        self.encoder = None
        try:
            if bundle is not None:
                from ..encoder import Encoder

                self.encoder = Encoder(bundle, providers=providers, threads=threads)
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

    # ----------------------------------------------------------------- transport
    def _request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                 content: bytes | None = None, json_body: Any = None, files: Any = None,
                 data: Any = None, headers: Mapping[str, str] | None = None,
                 timeout: float | None = None) -> Any:
        """Send one request with retries; the decoded JSON answer, or the mapped exception."""
        hdrs = {**self._headers, **(headers or {})}
        if json_body is not None:
            content = json.dumps(json_body, ensure_ascii=False).encode()
            hdrs["Content-Type"] = "application/json"
        request = self._http.build_request(
            method, self.url + path, params=params, content=content, files=files, data=data,
            headers=hdrs, timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout)
        body = request.read() if files is not None else (content or b"")
        attempt = 0
        while True:
            try:
                response = self._http.send(request)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt >= self.http.retries:
                    raise self._transport_error(exc) from None
                self._sleep(attempt, None, f"{exc.__class__.__name__}")
                attempt += 1
                continue
            self.last_request_bytes = len(body)
            self.bytes_sent += len(body)
            if response.status_code == RETRY_STATUS and attempt < self.http.retries:
                self._sleep(attempt, _retry_after(response), "503")
                attempt += 1
                continue
            return self._decode(response)

    def _transport_error(self, exc: Exception) -> Exception:
        n = self.http.retries + 1
        if isinstance(exc, httpx.TimeoutException):
            return ServiceTimeoutError(f"no answer from {self.url} in time after {n} attempts "
                                       f"({exc.__class__.__name__})", 504, "ServiceTimeoutError")
        return ServiceConnectionError(f"cannot reach {self.url} after {n} attempts "
                                      f"({exc.__class__.__name__})", 0, "ServiceConnectionError")

    def _sleep(self, attempt: int, retry_after: float | None, why: str) -> None:
        delay = min(self.http.max_backoff, self.http.backoff * (2 ** attempt))
        delay *= 0.5 + random.random() / 2  # jitter: clients that failed together spread out
        if retry_after is not None:
            delay = min(self.http.max_backoff, max(delay, retry_after))
        log.info("retrying %s in %.2f s (%s)", self.url, delay, why)
        time.sleep(delay)

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code >= 400:
            raise exception_for(response.status_code, payload, _retry_after(response))
        return payload

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
        try:
            response = self._http.get(self.url + "/readyz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _limits(self) -> dict[str, Any]:
        if self._info is None:
            self.info()
        assert self._info is not None
        return self._info["limits"]

    def _check_encoder(self) -> None:
        assert self.encoder is not None
        info = self.info()
        served = (info.get("encoder") or {}).get("encoder_id") or info["encoder_id"]
        if int(info["bits"]) != self.encoder.bits or served != self.encoder.bundle.encoder_id:
            raise CollectionMismatchError(
                f"the service's collection {info['collection']!r} holds {info['bits']}-bit codes "
                f"of encoder {served}; the local bundle is encoder "
                f"{self.encoder.bundle.encoder_id} ({self.encoder.bits} bits). Codes of "
                f"different encoders are not comparable: use the bundle the service runs")

    def _encode(self, images: list[Any], batch_size: int | None = None) -> np.ndarray:
        assert self.encoder is not None
        codes = self.encoder.encode(images, batch_size)
        assert isinstance(codes, np.ndarray)
        return codes

    def _encoder_header(self) -> dict[str, str]:
        return {ENCODER_HEADER: self.encoder.bundle.encoder_id} if self.encoder else {}

    @staticmethod
    def _options(k: Any, filter: Filter, radius: Any, where: Mapping[str, Any] | None = None,
                 ) -> dict[str, Any]:
        """Query parameters of a search, checked as the local store checks them; ``where``:
        place and period as :func:`~rsir_sdk.serve.geo_wire.geo_to_wire` gave them."""
        params: dict[str, Any] = {"k": store_values.k(k)}
        wire = _wire_filter(filter)
        if wire is not None:
            params["filter"] = json.dumps(wire, ensure_ascii=False)
        radius = store_values.radius(radius)
        if radius is not None:
            params["radius"] = radius
        for key, value in (where or {}).items():
            params[key] = json.dumps(value)
        return params

    @staticmethod
    def _hits(rows: Sequence[Mapping[str, Any]]) -> list[Hit]:
        return [hit_from_json(h) for h in rows]

    @staticmethod
    def _chunks(n: int, size: int) -> list[slice]:
        return [slice(i, min(n, i + size)) for i in range(0, n, max(1, size))]

    def _upload_size(self, batch_size: int | None) -> int:
        most = int(self._limits()["max_batch"])
        if batch_size is None:
            return most
        return min(most, store_values.positive_int(batch_size, "batch_size"))

    # ----------------------------------------------------------------- search
    def search(self, img: Any, k: int = 10, filter: Filter = None, radius: int | None = None, *,
               bbox: Any = None, near: Any = None, time: Any = None) -> list[Hit]:
        """Hamming top-``k`` for one image (path, bytes, file object, PIL image, array or URL);
        ``bbox``, ``near``, ``time``: place and period, as for :meth:`rsir_sdk.Retriever.search`."""
        where = geo_to_wire(bbox, near, time)
        params = self._options(k, filter, radius, where)
        if self.encoder is not None:
            return self.search_codes(self._encode([img]), k, filter, radius, **where)[0]
        if isinstance(img, str) and img.lower().startswith(("http://", "https://")):
            body = {"url": img, **{key: v for key, v in params.items() if key == "k"},
                    **where}
            if "radius" in params:
                body["radius"] = params["radius"]
            if "filter" in params:
                body["filter"] = _wire_filter(filter)
            payload = self._request("POST", "/v1/search", json_body=body)
        else:
            name, data, mime = _image_file(img)
            payload = self._request("POST", "/v1/search", params=params, content=data,
                                    headers={"Content-Type": mime})
        return self._hits(payload["hits"])

    def search_batch(self, imgs: Sequence[Any], k: int = 10, filter: Filter = None,
                     radius: int | None = None, batch_size: int | None = None, *,
                     bbox: Any = None, near: Any = None, time: Any = None) -> list[list[Hit]]:
        """Top-``k`` for each image, in order. ``batch_size``: images per encoder call with a
        local bundle, else images per upload (at most the service's max batch)."""
        where = geo_to_wire(bbox, near, time)
        params = self._options(k, filter, radius, where)
        imgs = list(imgs)
        if self.encoder is not None:
            return self.search_codes(self._encode(imgs, batch_size), k, filter, radius, **where)
        out: list[list[Hit]] = []
        for part in self._chunks(len(imgs), self._upload_size(batch_size)):
            files = [("image", _image_file(x)) for x in imgs[part]]
            payload = self._request("POST", "/v1/search/batch", params=params, files=files)
            out += [self._hits(r) for r in payload["results"]]
        return out

    def search_codes(self, codes: np.ndarray | bytes, k: int = 10, filter: Filter = None,
                     radius: int | None = None, *, bbox: Any = None, near: Any = None,
                     time: Any = None) -> list[list[Hit]]:
        """Search packed codes ``uint8 (n, bits/8)`` (or one code's bytes): raw bytes travel."""
        params = self._options(k, filter, radius, geo_to_wire(bbox, near, time))
        bits = self.encoder.bits if self.encoder is not None else None
        packed = as_packed(codes, bits)
        out: list[list[Hit]] = []
        step = len(packed) if len(packed) <= 1000 else int(self._limits()["max_codes"])
        for part in self._chunks(len(packed), step):
            payload = self._request(
                "POST", "/v1/search/codes", params=params, content=packed[part].tobytes(),
                headers={"Content-Type": "application/octet-stream", **self._encoder_header()})
            out += [self._hits(r) for r in payload["results"]]
        return out

    def range_search(self, img: Any, radius: int, filter: Filter = None, *, bbox: Any = None,
                     near: Any = None, time: Any = None) -> list[Hit]:
        """Every item within ``radius`` of one image (in the place and period), up to the
        service's max k."""
        if radius is None:
            raise InvalidInputError("range_search needs a radius (an integer >= 0)")
        self._options(1, filter, radius, geo_to_wire(bbox, near, time))
        return self.search(img, k=int(self._limits()["max_k"]), filter=filter, radius=radius,
                           bbox=bbox, near=near, time=time)

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
        stores them.
        """
        if isinstance(images, (str, bytes, os.PathLike)):
            raise InvalidInputError("images must be a list (for one image pass [image])")
        images = list(images)
        if paths is None:  # as a Retriever stores them: the sources that are paths
            paths = [str(x) if isinstance(x, (str, os.PathLike)) else "" for x in images]
        if ids is None:
            if not all(paths):
                raise InvalidInputError("ids are required when some images are not file paths")
            ids = list(paths)
        ids = store_values.ids(ids)
        if len(ids) != len(images):
            raise InvalidInputError(f"{len(images)} images but {len(ids)} ids")
        _check_columns(ids, labels, paths, metadata)
        places = footprints_to_wire(footprints, ids)
        when = times_to_wire(times, ids)
        if self.encoder is not None:
            return self.add_codes(self._encode(images, batch_size), ids, labels, paths, metadata,
                                  footprints=places, times=when)
        written = 0
        for part in self._chunks(len(images), self._upload_size(batch_size)):
            form = {"ids": json.dumps(ids[part])}
            for name, col in (("labels", labels), ("paths", paths), ("metadata", metadata),
                              ("footprints", places), ("times", when)):
                if col is not None:
                    form[name] = json.dumps(list(col)[part])
            files = [("image", _image_file(x)) for x in images[part]]
            written += int(self._request("POST", "/v1/items", files=files, data=form)["written"])
        return written

    def add_codes(self, codes: np.ndarray | bytes, ids: Sequence[str],
                  labels: Sequence[str] | None = None, paths: Sequence[str] | None = None,
                  metadata: Sequence[Mapping[str, Any] | None] | None = None,
                  footprints: Sequence[Any] | None = None,
                  times: Sequence[Any] | None = None) -> int:
        """Upsert packed codes with their ids; returns how many were written (``footprints``,
        ``times``: as for :meth:`add_images`)."""
        bits = self.encoder.bits if self.encoder is not None else None
        packed = as_packed(codes, bits)
        ids = store_values.ids(ids)
        if len(ids) != len(packed):
            raise InvalidInputError(f"{len(ids)} ids but {len(packed)} codes")
        _check_columns(ids, labels, paths, metadata)
        footprints = footprints_to_wire(footprints, ids)
        times = times_to_wire(times, ids)
        written = 0
        for part in self._chunks(len(ids), int(self._limits()["max_codes"])):
            body: dict[str, Any] = {
                "ids": ids[part],
                "codes": [base64.b64encode(row.tobytes()).decode("ascii") for row in packed[part]],
            }
            for name, col in (("labels", labels), ("paths", paths), ("metadata", metadata),
                              ("footprints", footprints), ("times", times)):
                if col is not None:
                    body[name] = list(col)[part]
            written += int(self._request("POST", "/v1/codes", json_body=body,
                                         headers=self._encoder_header())["written"])
        return written

    def add_learned_codes(self) -> int:
        """Have the service put its bundle's learned database codes (AHCL's V) in as learned
        (``POST /v1/learned``, write token); how many were written."""
        return int(self._request("POST", "/v1/learned", json_body={})["written"])

    def prepare_for_search(self, **kw: Any) -> dict[str, Any]:
        """Have the service leave its collection ready to search at full speed
        (``POST /v1/prepare``, write token); what was done. Only ``timeout`` (seconds) travels:
        a ``progress`` callback cannot."""
        unknown = sorted(set(kw) - {"timeout"})
        if unknown:
            raise InvalidInputError(f"prepare_for_search over HTTP takes timeout only, not "
                                    f"{', '.join(unknown)}")
        timeout = kw.get("timeout", 3600.0)
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
        those the service decides (``engine``, ``address``, ``bulk_dir``, ``ray``, a higher
        ``max_pixels``: refused with :class:`~rsir_sdk.errors.InvalidInputError`).

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
        summary = _summary_from_json(payload, self.url)
        _finish_index(summary, report, progress)
        return summary

    def delete(self, ids: Sequence[str]) -> int:
        """Delete items by id; returns how many existed."""
        ids = store_values.lookup_ids(ids)
        if not ids:
            return 0
        return sum(int(self._request("POST", "/v1/items/delete",
                                     json_body={"ids": ids[part]})["deleted"])
                   for part in self._chunks(len(ids), int(self._limits()["max_codes"])))

    # ----------------------------------------------------------------- reads
    def get(self, ids: Sequence[str]) -> list[StoredItem]:
        """Stored items by id, in the order asked; missing ids left out."""
        ids = store_values.lookup_ids(ids)
        out: list[StoredItem] = []
        for part in self._chunks(len(ids), int(self._limits()["max_codes"]) if ids else 1):
            payload = self._request("POST", "/v1/items/get", json_body={"ids": ids[part]})
            out += [item_from_json(it) for it in payload["items"]]
        return out

    def count(self, filter: Filter = None, *, bbox: Any = None, near: Any = None,
              time: Any = None) -> int:
        """Number of items (matching ``filter``: a dict or, where the service allows it, a
        Milvus expression string; and the place and period)."""
        wire = _wire_filter(filter)
        params = {} if wire is None else {"filter": json.dumps(wire, ensure_ascii=False)}
        params.update({key: json.dumps(v) for key, v in geo_to_wire(bbox, near, time).items()})
        return int(self._request("GET", "/v1/count", params=params)["count"])

    def close(self) -> None:
        """Close the HTTP connections (the service keeps running)."""
        if self._own_client:
            self._http.close()

    def __enter__(self) -> "RemoteRetriever":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        edge = f", bundle={self.encoder.bundle.encoder_id!r}" if self.encoder else ""
        return f"RemoteRetriever({self.url!r}{edge})"


def _wire_filter(filter: Filter) -> dict[str, Any] | str | None:
    """A filter checked as the local store checks it (:func:`build_filter`), in its JSON form
    (``None`` when it filters nothing)."""
    expr = store_keys.build_filter(filter)
    if not expr:
        return None
    if isinstance(filter, str):
        return expr
    assert filter is not None
    return {key: list(v) if isinstance(v, (list, tuple, set, frozenset)) else v
            for key, v in filter.items()}


def _check_columns(ids: list[str], labels: Any, paths: Any, metadata: Any) -> None:
    """Refuse bad labels, paths or metadata before any image is read or request sent."""
    store_values.labels(labels, len(ids))
    store_values.paths(paths, len(ids))
    store_values.metadata(metadata, ids)


def _summary_from_json(obj: Mapping[str, Any], url: str) -> IngestSummary:
    """The :class:`~rsir_sdk.ingest.IngestSummary` that ``POST /v1/index`` answered."""
    from ..failures import Failure
    from ..ingest import IngestSummary

    try:
        return IngestSummary(
            total=int(obj["total"]), indexed=int(obj["indexed"]), skipped=int(obj["skipped"]),
            failed=[Failure(**f) for f in obj.get("failures") or []],
            ignored=int(obj.get("ignored") or 0),
            ignored_examples=list(obj.get("ignored_examples") or []),
            seconds=float(obj.get("seconds") or 0.0), collection=str(obj.get("collection", "")),
            uri=url, prepare=obj.get("prepare"), bulk=obj.get("bulk"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ServiceError(f"the service's index answer is not a summary ({exc})", 502,
                           "ServiceError") from None


def _finish_index(summary: IngestSummary, report: Any,
                  progress: Callable[[IngestProgress], None] | None) -> None:
    """Write the local failure report and the final progress of a remote ingestion."""
    from ..failures import FailureReport
    from ..ingest import IngestProgress

    if report is not None:
        own = not isinstance(report, FailureReport)
        rep = FailureReport(report) if own else report
        for failure in summary.failed:
            rep.add(failure)
        if own:
            rep.close()
            summary.report = str(rep.path) if summary.failed else None
    if progress is not None:
        progress(IngestProgress(total=summary.total, indexed=summary.indexed,
                                encoded=summary.indexed, skipped=summary.skipped,
                                failed=len(summary.failed)))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _image_file(img: Any) -> tuple[str, bytes, str]:
    """``(name, bytes, content type)`` of an image source, for an upload.

    Paths and bytes travel as they are (the service decodes them exactly as a local Retriever
    would); PIL images and arrays are sent as lossless PNG.
    """
    if isinstance(img, (str, os.PathLike)):
        from ..errors import ImageLoadError

        if not os.path.isfile(img):
            raise ImageLoadError(str(img), "no such file" if not os.path.exists(img) else "not a file")
        with open(img, "rb") as fh:
            return os.path.basename(str(img)), fh.read(), "application/octet-stream"
    if isinstance(img, (bytes, bytearray, memoryview)):
        return "image", bytes(img), "application/octet-stream"
    if hasattr(img, "read"):
        data = img.read()
        return os.path.basename(str(getattr(img, "name", "image"))), data, \
            "application/octet-stream"
    from PIL import Image

    from ..images import load_image

    buf = io.BytesIO()
    Image.fromarray(load_image(img)).save(buf, format="PNG")  # the pixels a Retriever would use
    return "image.png", buf.getvalue(), "image/png"
