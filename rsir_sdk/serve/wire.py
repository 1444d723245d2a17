"""What :class:`~rsir_sdk.serve.client.RemoteRetriever` puts on the wire and reads back from it.

Small conversions between the client's arguments and the JSON/multipart shapes of
``rsir serve``, kept apart from the verbs so that each verb reads as what it asks:

- :func:`wire_filter`: a filter checked as the local store checks it, in its JSON form;
- :func:`check_columns`: labels, paths and metadata refused before any image is read;
- :func:`image_file`: an image source as an upload part (files and bytes as they are, pixels
  as lossless PNG);
- :func:`summary_from_json`, :func:`finish_index`: the answer of ``POST /v1/index`` as an
  :class:`~rsir_sdk.ingest.IngestSummary`, and the local failure report and progress it implies;
- :func:`service_url`, :func:`search_mode`, :func:`search_params`, :func:`chunks`: the base URL,
  a search's mode and query parameters checked as the local store checks them, and requests
  cut to the service's limits;
- :func:`adopt_served_encoding`: an edge bundle checked against the service's collection and
  given its raster rule; :func:`base64_rows`, :func:`columns_part`: write bodies.

Place and period travel by :mod:`rsir_sdk.serve.geo_wire`; the requests themselves by
:mod:`rsir_sdk.serve.transport`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple, Sequence

from ..api import Filter as Filter  # re-exported: it was defined here
from ..errors import CollectionMismatchError, InvalidInputError
from ..hits import SEARCH_MODES
from ..rasters import as_rule
from ..redact import redact_uri
from ..store import keys as store_keys
from ..store import values as store_values
from .errors import ServiceError

if TYPE_CHECKING:
    import numpy as np

    from ..encoder import Encoder
    from ..ingest import IngestProgress, IngestSummary

__all__ = ["Filter", "check_columns", "finish_index", "image_file", "summary_from_json",
           "wire_filter"]


def wire_filter(filter: Filter) -> dict[str, Any] | str | None:
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


def check_columns(ids: list[str], labels: Any, paths: Any, metadata: Any) -> None:
    """Refuse bad labels, paths or metadata before any image is read or request sent."""
    store_values.labels(labels, len(ids))
    store_values.paths(paths, len(ids))
    store_values.metadata(metadata, ids)


def summary_from_json(obj: Mapping[str, Any], url: str) -> IngestSummary:
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
            uri=url, prepare=obj.get("prepare"), bulk=obj.get("bulk"),
            footprint_errors={str(k): int(v)
                              for k, v in (obj.get("footprint_errors") or {}).items()},
            time_errors={str(k): int(v) for k, v in (obj.get("time_errors") or {}).items()},
            stored_elsewhere=int(obj.get("stored_elsewhere") or 0),
            stored_elsewhere_examples=[(str(a), str(b)) for a, b in
                                       obj.get("stored_elsewhere_examples") or []],
            not_listed=int(obj.get("not_listed") or 0), pruned=int(obj.get("pruned") or 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise ServiceError(f"the service's index answer is not a summary ({exc})", 502,
                           "ServiceError") from None


def finish_index(summary: IngestSummary, report: Any,
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
            rep.close(keep_earlier=summary.total == 0)
            summary.report = str(rep.path) if summary.failed else None
    if progress is not None:
        progress(IngestProgress(total=summary.total, indexed=summary.indexed,
                                encoded=summary.indexed, skipped=summary.skipped,
                                failed=len(summary.failed)))


def image_file(img: Any) -> tuple[str, bytes, str]:
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


def search_mode(mode: Any) -> str:
    """``mode`` checked as the service checks it: one of :data:`rsir_sdk.hits.SEARCH_MODES`
    (:class:`~rsir_sdk.errors.InvalidInputError`, one line, otherwise)."""
    if not isinstance(mode, str) or mode not in SEARCH_MODES:
        raise InvalidInputError(f"mode must be one of {', '.join(SEARCH_MODES)}, "
                                f"got {mode!r:.40}")
    return mode


def service_url(url: Any) -> str:
    """The service's base URL without a trailing slash; one that is not ``http(s)://host...``
    is refused at once (``"127.0.0.1:8000"`` was retried as if the network had failed)."""
    if not isinstance(url, str):
        raise InvalidInputError(f"url must be a string like http://127.0.0.1:8000, got "
                                f"{type(url).__name__}")
    scheme, _, rest = url.strip().partition("://")
    if scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise InvalidInputError(f"url must start with http:// or https:// and name a host, "
                                f"e.g. http://127.0.0.1:8000, got {redact_uri(url)!r}")
    return url.strip().rstrip("/")


def search_params(k: Any, filter: Filter, radius: Any, where: Mapping[str, Any] | None = None,
             mode: Any = "default") -> dict[str, Any]:
    """The query parameters of a search, checked as the local store checks them; ``where``:
    place and period as :func:`~rsir_sdk.serve.geo_wire.geo_to_wire` gave them; ``mode``
    sent when not the default."""
    params: dict[str, Any] = {"k": store_values.k(k)}
    if search_mode(mode) != "default":
        params["mode"] = mode
    wire = wire_filter(filter)
    if wire is not None:
        params["filter"] = json.dumps(wire, ensure_ascii=False)
    radius = store_values.radius(radius)
    if radius is not None:
        params["radius"] = radius
    for key, value in (where or {}).items():
        params[key] = json.dumps(value)
    return params


class Upload(NamedTuple):
    """One request's images: ``files`` (multipart parts) or ``urls`` (sent as JSON ``urls``,
    which the service downloads), never both; ``part``: their places in the caller's list."""

    part: slice
    files: list[tuple[str, tuple[str, bytes, str]]]
    urls: list[str]


def is_url(img: Any) -> bool:
    """Whether an image source is an ``http(s)://`` URL (the service downloads it)."""
    return isinstance(img, str) and img.lower().startswith(("http://", "https://"))


def upload_parts(images: Sequence[Any], most: int, max_bytes: int | None) -> Iterator[Upload]:
    """Uploads of at most ``most`` images whose files stay under the service's ``max_bytes``
    body limit (less a tenth and 64 KiB for the form fields and the multipart framing), each
    image read once and only its request held in memory; an image larger than that goes alone
    (the service answers 413 naming its size). Three 11 MB images went in one request and got
    413, though the limit was known from ``/v1/info``. URLs go in requests of their own, in
    order (they were read as local file names: "no such file")."""
    budget = None if not max_bytes else max(1, int(max_bytes * 0.9) - 65536)
    start, size = 0, 0
    files: list[tuple[str, tuple[str, bytes, str]]] = []
    urls: list[str] = []
    for i, img in enumerate(images):
        held = len(files) + len(urls)
        if held >= most or (held and is_url(img) != bool(urls)):  # full, or the kind changes
            yield Upload(slice(start, i), files, urls)
            start, files, urls, size = i, [], [], 0
        if is_url(img):
            urls.append(img)
            continue
        file = image_file(img)
        n = len(file[1]) + 512
        if files and budget is not None and size + n > budget:
            yield Upload(slice(start, i), files, urls)
            start, files, size = i, [], 0
        files.append(("image", file))
        size += n
    if files or urls:
        yield Upload(slice(start, len(images)), files, urls)


def json_search_body(params: Mapping[str, Any], filter: Filter,
                     where: Mapping[str, Any]) -> dict[str, Any]:
    """A search's options (:func:`search_params`) as a JSON body's fields, for requests whose
    images are URLs: the filter as its JSON value, not a string."""
    body = {key: v for key, v in params.items() if key in ("k", "mode", "radius")}
    if "filter" in params:
        body["filter"] = wire_filter(filter)
    return {**body, **where}


def chunks(n: int, size: int) -> list[slice]:
    """``n`` items cut into requests of at most ``size`` (the service's limits)."""
    return [slice(i, min(n, i + size)) for i in range(0, n, max(1, size))]


class PacedParts:
    """Slices of ``n`` items for requests that each end well inside the service's time limit:
    the first of ``first`` items, then as many as the last request's pace fits in ``budget_s``
    (never more than ``most``, the service's own bound). Why: at 585k items a search costs about
    5 ms a code on 2 cores, so requests of the service's ``max_codes`` (10,000) needed ~50 s
    and every one was a 504 at its 30 s limit. The time measured is the consumer's between two
    items of the iteration (one request)."""

    def __init__(self, n: int, most: int, budget_s: float, first: int = 256):
        self.n, self.most, self.budget_s = n, max(1, most), budget_s
        self.first = max(1, min(first, self.most))

    def __iter__(self) -> Iterator[slice]:
        start, size = 0, self.first
        while start < self.n:
            part = slice(start, min(self.n, start + size))
            began = time.monotonic()
            yield part
            per_item = (time.monotonic() - began) / (part.stop - part.start)
            size = self.most if per_item <= 0 else max(1, min(self.most,
                                                                int(self.budget_s / per_item)))
            start = part.stop


def adopt_served_encoding(info: Mapping[str, Any], encoder: "Encoder") -> None:
    """Refuse an edge bundle whose codes would not compare with the served collection's
    (another encoder or length), and convert TIFFs with the collection's recorded raster rule:
    a GeoTIFF encoded with the default rule here gave other codes than the collection's."""
    served = (info.get("encoder") or {}).get("encoder_id") or info["encoder_id"]
    if int(info["bits"]) != encoder.bits or served != encoder.bundle.encoder_id:
        raise CollectionMismatchError(
            f"the service's collection {info['collection']!r} holds {info['bits']}-bit codes "
            f"of encoder {served}; the local bundle is encoder {encoder.bundle.encoder_id} "
            f"({encoder.bits} bits). Codes of different encoders are not comparable: use the "
            f"bundle the service runs")
    rule = (info.get("encoder") or {}).get("raster_rule") or info.get("raster_rule")
    if rule:
        encoder.raster_rule = as_rule(rule)


def base64_rows(rows: "np.ndarray") -> list[str]:
    """Packed codes, one base64 text per row (the JSON form of ``POST /v1/codes``)."""
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]


def columns_part(columns: Mapping[str, Any], part: slice) -> dict[str, list[Any]]:
    """The item columns given (``None`` left out) cut to one request's ``part``."""
    return {name: list(col)[part] for name, col in columns.items() if col is not None}


def check_fine_given(fine_rows: Any, mode: str | None, info: Mapping[str, Any]) -> None:
    """Say what a Python caller must pass, as the local Retriever does, before the request: an
    appearance search (``mode``) or a write (``mode=None``) to a collection that keeps fine codes
    without ``fine=`` (the service's answer names the wire's fields instead)."""
    if fine_rows is not None:
        return
    if mode == "appearance":
        raise InvalidInputError("mode='appearance' searches by the fine code: give fine= "
                                "(the fine codes of the same images, Encoder.encode_both)")
    kept = info.get("collection_fine_bits")
    if mode is None and kept:
        raise InvalidInputError(
            f"collection {info.get('collection')!r} keeps {kept}-bit fine codes: pass fine= "
            f"with one per item (uint8 (n, {int(kept) // 8}); Encoder.encode_both)")
