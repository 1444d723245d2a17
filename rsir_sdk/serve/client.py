"""``RemoteRetriever``: the :class:`~rsir_sdk.Retriever` verbs against ``rsir serve`` over HTTP.

>>> from rsir_sdk.serve.client import RemoteRetriever
>>> r = RemoteRetriever("http://127.0.0.1:8000", token="read-token")          # doctest: +SKIP
>>> r.search("query.jpg", k=5)[0]                                              # doctest: +SKIP
Hit(id='Forest/Forest_1001.jpg', distance=0, label='Forest', path='...', metadata={})

The same :class:`~rsir_sdk.retriever.Hit` objects come back and the same exception classes are
raised (the JSON error kind names the class; see :mod:`rsir_sdk.serve.errors`).

**The edge path**: given a local ``bundle`` (the one the service runs, e.g. an int8 one), images
are encoded on this device with :class:`~rsir_sdk.Encoder` and only the packed codes travel
(``bits/8`` bytes per image instead of the image file); the request names the encoder so that
a service filled by another encoder refuses the codes (:class:`CollectionMismatchError`).
Without a bundle, image files are uploaded and the service encodes them.

Connection errors, timeouts and 503 answers are retried ``retries`` times with exponential
backoff (``backoff * 2**attempt``, at most ``max_backoff`` s; a 503's ``Retry-After`` is
honoured up to ``max_backoff``). Writes are upserts by id, so retrying them is safe.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import time
from typing import Any, Mapping, Sequence

import httpx
import numpy as np

from ..codes import as_packed
from ..errors import CollectionMismatchError
from ..retriever import Hit
from .errors import ServiceConnectionError, ServiceTimeoutError, exception_for

log = logging.getLogger(__name__)

ENCODER_HEADER = "X-Rsir-Encoder-Id"
RETRY_STATUS = 503


def _stored_item_class() -> Any:
    """``rsir_sdk.StoredItem`` (imported late: the client module must stay light)."""
    from ..store.collection import StoredItem

    return StoredItem


class RemoteRetriever:
    """Search, add, get, delete and count through a running ``rsir serve``.

    ``url``: the service's base URL. ``token``: its bearer token (read or write).
    ``bundle``: a local bundle (path or :class:`~rsir_sdk.Bundle`) to encode on this device and
    send codes only. ``timeout``: seconds per HTTP request. ``retries``: extra attempts after a
    connection error, timeout or 503. ``collection``: if given, the service must serve that
    collection (:class:`~rsir_sdk.errors.StoreError` subclass ``CollectionNotFoundError`` or a
    ``NotFoundError`` otherwise). ``client``: an ``httpx.Client`` to use instead of a new one.
    """

    def __init__(self, url: str, token: str | None = None, bundle: Any = None, *,
                 timeout: float = 30.0, retries: int = 3, backoff: float = 0.2,
                 max_backoff: float = 5.0, collection: str | None = None,
                 providers: Sequence[str] | None = None, threads: int | None = None,
                 client: httpx.Client | None = None):
        self.url = url.rstrip("/")
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._own_client = client is None
        self._http = client or httpx.Client(timeout=timeout)
        self._headers = headers
        #: bytes of request bodies sent, total and by the last request (codes vs uploads)
        self.bytes_sent = 0
        self.last_request_bytes = 0
        self._info: dict[str, Any] | None = None
        self.encoder = None
        if bundle is not None:
            from ..encoder import Encoder

            self.encoder = Encoder(bundle, providers=providers, threads=threads)
            self._check_encoder()
        if collection is not None and self.info()["collection"] != collection:
            from ..errors import CollectionNotFoundError

            raise CollectionNotFoundError(f"the service at {self.url} serves collection "
                                          f"{self.info()['collection']!r}, not {collection!r}")

    # ----------------------------------------------------------------- transport
    def _request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                 content: bytes | None = None, json_body: Any = None,
                 files: Any = None, data: Any = None,
                 headers: Mapping[str, str] | None = None) -> Any:
        """Send one request with retries; the decoded JSON answer, or the mapped exception."""
        hdrs = {**self._headers, **(headers or {})}
        if json_body is not None:
            content = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        request = self._http.build_request(method, self.url + path, params=params,
                                           content=content, files=files, data=data,
                                           headers=hdrs)
        body = request.read() if files is not None else (content or b"")
        attempt = 0
        while True:
            try:
                response = self._http.send(request)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt >= self.retries:
                    raise self._transport_error(exc) from None
                self._sleep(attempt, None, f"{exc.__class__.__name__}")
                attempt += 1
                continue
            self.last_request_bytes = len(body)
            self.bytes_sent += len(body)
            if response.status_code == RETRY_STATUS and attempt < self.retries:
                self._sleep(attempt, _retry_after(response), "503")
                attempt += 1
                continue
            return self._decode(response)

    def _transport_error(self, exc: Exception) -> Exception:
        if isinstance(exc, httpx.TimeoutException):
            return ServiceTimeoutError(f"no answer from {self.url} in time after "
                                       f"{self.retries + 1} attempts ({exc.__class__.__name__})",
                                       504, "ServiceTimeoutError")
        return ServiceConnectionError(f"cannot reach {self.url} after {self.retries + 1} "
                                      f"attempts ({exc.__class__.__name__})", 0,
                                      "ServiceConnectionError")

    def _sleep(self, attempt: int, retry_after: float | None, why: str) -> None:
        delay = min(self.max_backoff, self.backoff * (2 ** attempt))
        delay *= 0.5 + random.random() / 2  # jitter: clients that failed together spread out
        if retry_after is not None:
            delay = min(self.max_backoff, max(delay, retry_after))
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

    # ----------------------------------------------------------------- helpers
    def info(self) -> dict[str, Any]:
        """What the service serves: collection, method, bits, encoder_id, count, limits..."""
        info = self._request("GET", "/v1/info")
        self._info = info
        return info

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

    def _encode(self, images: list[Any]) -> np.ndarray:
        assert self.encoder is not None
        codes = self.encoder.encode(images)
        assert isinstance(codes, np.ndarray)
        return codes

    def _encoder_header(self) -> dict[str, str]:
        return {ENCODER_HEADER: self.encoder.bundle.encoder_id} if self.encoder else {}

    @staticmethod
    def _options(k: int, filter: Mapping[str, Any] | None, radius: int | None) -> dict[str, Any]:
        if isinstance(filter, str):
            raise ValueError('the service takes dict filters only, e.g. {"label": "Forest"}')
        params: dict[str, Any] = {"k": int(k)}
        if filter:
            params["filter"] = json.dumps(dict(filter), ensure_ascii=False)
        if radius is not None:
            params["radius"] = int(radius)
        return params

    @staticmethod
    def _hits(rows: Sequence[Mapping[str, Any]]) -> list[Hit]:
        return [Hit(id=h["id"], distance=int(h["distance"]), label=h.get("label", ""),
                    path=h.get("path", ""), metadata=dict(h.get("metadata") or {})) for h in rows]

    def _chunks(self, n: int, size: int) -> list[slice]:
        return [slice(i, min(n, i + size)) for i in range(0, n, max(1, size))]

    # ----------------------------------------------------------------- search
    def search(self, img: Any, k: int = 10, filter: Mapping[str, Any] | None = None,
               radius: int | None = None) -> list[Hit]:
        """Hamming top-``k`` for one image (path, bytes, file object, PIL image, array or URL)."""
        if self.encoder is not None:
            return self.search_codes(self._encode([img]), k, filter, radius)[0]
        params = self._options(k, filter, radius)
        if isinstance(img, str) and img.lower().startswith(("http://", "https://")):
            payload = self._request("POST", "/v1/search", json_body={"url": img, **_jsonable(params)})
        else:
            name, data, mime = _image_file(img)
            payload = self._request("POST", "/v1/search", params=params, content=data,
                                    headers={"Content-Type": mime})
        return self._hits(payload["hits"])

    def search_batch(self, imgs: Sequence[Any], k: int = 10,
                     filter: Mapping[str, Any] | None = None,
                     radius: int | None = None) -> list[list[Hit]]:
        """Top-``k`` for each image, in order (uploads split by the service's max batch)."""
        imgs = list(imgs)
        if self.encoder is not None:
            return self.search_codes(self._encode(imgs), k, filter, radius)
        params = self._options(k, filter, radius)
        out: list[list[Hit]] = []
        for part in self._chunks(len(imgs), int(self._limits()["max_batch"])):
            files = [("image", _image_file(x)) for x in imgs[part]]
            payload = self._request("POST", "/v1/search/batch", params=params, files=files)
            out += [self._hits(r) for r in payload["results"]]
        return out

    def search_codes(self, codes: np.ndarray | bytes, k: int = 10,
                     filter: Mapping[str, Any] | None = None,
                     radius: int | None = None) -> list[list[Hit]]:
        """Search packed codes ``uint8 (n, bits/8)`` (or one code's bytes): raw bytes travel."""
        bits = self.encoder.bits if self.encoder is not None else None
        packed = as_packed(codes, bits)
        params = self._options(k, filter, radius)
        out: list[list[Hit]] = []
        step = len(packed) if len(packed) <= 1000 else int(self._limits()["max_codes"])
        for part in self._chunks(len(packed), step):
            payload = self._request(
                "POST", "/v1/search/codes", params=params, content=packed[part].tobytes(),
                headers={"Content-Type": "application/octet-stream", **self._encoder_header()})
            out += [self._hits(r) for r in payload["results"]]
        return out

    def range_search(self, img: Any, radius: int,
                     filter: Mapping[str, Any] | None = None) -> list[Hit]:
        """Every item within ``radius`` of one image, up to the service's max k."""
        return self.search(img, k=int(self._limits()["max_k"]), filter=filter, radius=radius)

    # ----------------------------------------------------------------- writes
    def add_images(self, images: Sequence[Any], ids: Sequence[str] | None = None,
                   labels: Sequence[str] | None = None,
                   metadata: Sequence[Mapping[str, Any] | None] | None = None,
                   paths: Sequence[str] | None = None) -> int:
        """Add images with their ids; returns how many were written.

        Ids default to the image paths when every image is a path (as with ``Retriever``).
        With a local bundle the images are encoded here and only codes are sent.
        """
        images = list(images)
        if ids is None:
            if not all(isinstance(x, (str, os.PathLike)) for x in images):
                raise ValueError("ids are required when some images are not file paths")
            ids = [str(x) for x in images]
        ids = [str(i) for i in ids]
        if len(ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(ids)} ids")
        if self.encoder is not None:
            return self.add_codes(self._encode(images), ids, labels, paths, metadata)
        written = 0
        for part in self._chunks(len(images), int(self._limits()["max_batch"])):
            form = {"ids": json.dumps(ids[part])}
            for name, col in (("labels", labels), ("paths", paths), ("metadata", metadata)):
                if col is not None:
                    form[name] = json.dumps(list(col)[part])
            files = [("image", _image_file(x)) for x in images[part]]
            written += int(self._request("POST", "/v1/items", files=files, data=form)["written"])
        return written

    def add_codes(self, codes: np.ndarray, ids: Sequence[str],
                  labels: Sequence[str] | None = None, paths: Sequence[str] | None = None,
                  metadata: Sequence[Mapping[str, Any] | None] | None = None) -> int:
        """Upsert packed codes with their ids; returns how many were written."""
        bits = self.encoder.bits if self.encoder is not None else None
        packed = as_packed(codes, bits)
        ids = [str(i) for i in ids]
        if len(ids) != len(packed):
            raise ValueError(f"{len(ids)} ids but {len(packed)} codes")
        written = 0
        for part in self._chunks(len(ids), int(self._limits()["max_codes"])):
            body: dict[str, Any] = {
                "ids": ids[part],
                "codes": [base64.b64encode(row.tobytes()).decode("ascii") for row in packed[part]],
            }
            for name, col in (("labels", labels), ("paths", paths), ("metadata", metadata)):
                if col is not None:
                    body[name] = list(col)[part]
            written += int(self._request("POST", "/v1/codes", json_body=body,
                                         headers=self._encoder_header())["written"])
        return written

    def delete(self, ids: Sequence[str]) -> int:
        """Delete items by id; returns how many existed."""
        ids = [str(i) for i in ids]
        if not ids:
            return 0
        return int(self._request("POST", "/v1/items/delete", json_body={"ids": ids})["deleted"])

    # ----------------------------------------------------------------- reads
    def get(self, ids: Sequence[str]) -> list[Any]:
        """Stored items (``StoredItem``: id, code, label, path, metadata); missing ids left out."""
        ids = [str(i) for i in ids]
        if not ids:
            return []
        item_cls = _stored_item_class()
        payload = self._request("POST", "/v1/items/get", json_body={"ids": ids})
        return [item_cls(id=it["id"],
                         code=np.frombuffer(base64.b64decode(it["code"]), dtype=np.uint8).copy(),
                         label=it.get("label", ""), path=it.get("path", ""),
                         metadata=dict(it.get("metadata") or {}))
                for it in payload["items"]]

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        """Number of items (matching a dict ``filter``)."""
        params = {}
        if filter:
            params = {"filter": self._options(1, filter, None)["filter"]}
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


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(params)
    if "filter" in out:
        out["filter"] = json.loads(out["filter"])
    return out


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
