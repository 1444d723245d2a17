"""Read what a request carries: images (multipart, raw body, JSON URL/base64), codes, options.

One endpoint accepts several body kinds, chosen by ``Content-Type``:

- ``multipart/form-data``: image files (any file field, in order; ``image`` by convention) and
  form fields ``k``, ``radius``, ``filter`` (JSON), ``bbox``/``near``/``time`` (text or JSON
  arrays, :mod:`rsir_sdk.serve.geo_wire`), ``ids``/``labels``/``paths``/``metadata``/
  ``footprints``/``times`` (JSON arrays);
- ``application/json``: the JSON models of :mod:`rsir_sdk.serve.schemas` (URLs or base64);
- anything else (``image/jpeg``, ``application/octet-stream``...): the body is one image, or for
  code endpoints the concatenated packed codes (``n * bits/8`` bytes).

``k``, ``radius``, ``filter``, ``bbox``, ``near``, ``time`` and ``mode`` may also come as query
parameters (the raw-body forms have no other place for them); body values win. Raw code bodies
with ``fine=1`` hold records of a code followed by its fine code (:func:`split_records`). Everything is validated here, before any work is
queued, and a mistake raises an error whose kind the client maps back to a Python class.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, TypeVar

import numpy as np
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from ..call_checks import check_radius_length
from ..decoding import quiet_decoding
from ..errors import CodeLengthError, ImageLoadError, InvalidInputError
from ..geo import GeoFilter
from ..hits import SEARCH_MODES
from ..images import DECODE_FORMATS, exif_georef, fetch_url
from ..pixels import Raster, decode_reduced, image_size
from ..preprocess import crop_size
from ..redact import redact_uri
from ..store import values as store_values
from ..store.keys import build_filter
from .config import ServeConfig
from .errors import InvalidRequestError, one_line
from .geo_wire import GEO_KEYS, geo_from_wire

M = TypeVar("M", bound=BaseModel)
MAX_FILTER_VALUES = 1000
#: about how deep client JSON may nest before the parser gives up (Python's recursion limit)
MAX_JSON_DEPTH = 990


@dataclass(frozen=True)
class ImageInput:
    """One image of a request: its bytes, or a URL the worker downloads; ``name`` for errors."""

    name: str
    data: bytes | None = None
    url: str | None = None


@dataclass
class Body:
    """A parsed request: its images or codes, search options and item columns."""

    images: list[ImageInput]
    fields: dict[str, Any]


def invalid(message: str) -> InvalidRequestError:
    """A 422 ``InvalidRequestError`` with a one-line message."""
    return InvalidRequestError(one_line(message), 422, "InvalidRequestError")


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower case."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def loads_json(text: str | bytes, what: str) -> Any:
    """``json.loads`` for client text; a 422 naming ``what`` when it is not JSON.

    Nesting deeper than the parser's recursion limit (``[`` x 100,000, a 3,000-deep filter)
    is a client mistake too: a 422, never a ``RecursionError`` traceback in the log.
    """
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise invalid(f"{what} is nested too deeply (JSON arrays/objects more than about "
                      f"{MAX_JSON_DEPTH} levels deep)") from None


def parse_model(model: type[M], data: Any) -> M:
    """Validate JSON data against ``model``; a 422 naming the first bad field otherwise.

    ``k`` and ``radius`` must be JSON integers, as the Python API wants ints: ``true``, ``1.0``
    and ``"5"`` are refused with :class:`~rsir_sdk.errors.InvalidInputError` (422), not
    converted by pydantic's lax mode; ``bbox``, ``near`` and ``time`` are parsed by
    :mod:`rsir_sdk.geo` first, so a bad one is its one-line ``InvalidInputError``.
    """
    if isinstance(data, dict):
        if "k" in data:  # null too: "Input should be a valid integer" named no field's rule
            _int(data["k"], "k", strict=True)
        if data.get("radius") is not None:
            _int(data["radius"], "radius", strict=True)
        if data.get("filter") is not None and not isinstance(data["filter"], str):
            # the library's one line, as the query string's filter reads (pydantic's union
            # errors read "filter.dict[str,nullable[union[...]]].label.str: ... (6 error(s))")
            check_filter(data["filter"], expressions=True)
        if any(data.get(name) is not None for name in GEO_KEYS):
            geo_from_wire(data)  # geo's one-line InvalidInputError, not pydantic's wording
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "body"
        raise invalid(f"{where}: {err.get('msg', 'invalid')} ({exc.error_count()} error(s))") from None


async def read_json(request: Request) -> Any:
    """The body as JSON; a 422 when it is not."""
    return loads_json(await request.body() or b"null", "the body")


def _json_field(value: Any, name: str) -> Any:
    """A form field or query value that holds JSON; a blank ``filter`` is no filter (as a
    blank query value and every other blank form field are)."""
    if value is None or not isinstance(value, str):
        return value
    if name == "filter" and not value.strip():
        return None
    try:
        return loads_json(value, f"field {name!r}")
    except InvalidRequestError as exc:
        if name != "filter" or "is not valid JSON" not in str(exc):  # too deep: said as it is
            raise
    # an expression typed as it is ('label == "River"'): say how it is written
    raise invalid("filter is not valid JSON: give a dict ({\"label\": \"River\"}) or, where the "
                  "service takes expressions, one as a JSON string (\"label == \\\"River\\\"\")")


async def read_images(request: Request, cfg: ServeConfig, model: type[BaseModel]) -> Body:
    """The images and fields of an image request (search, batch search, add images)."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        form = await request.form(max_files=cfg.max_batch + 1, max_fields=64,
                                  max_part_size=cfg.max_upload_bytes)
        images, fields = [], {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                images.append(ImageInput(f"upload {value.filename or key!r}", data=data))
            elif key in fields:
                raise invalid(f"form field {key!r} given twice")
            else:
                fields[key] = value
        for key in ("filter", "ids", "labels", "paths", "metadata", "footprints", "times"):
            if key in fields:
                fields[key] = _json_field(fields[key], key)
        if "url" in fields:
            url = str(fields.pop("url"))
            images.append(ImageInput(url, url=url))
        _check_fields(fields, model, extra=("k", "radius"))
    elif kind == "application/json":
        data = await read_json(request)
        # only what the body holds: a default (k's 10) read as "k given in the body" beside ?k=5
        parsed = parse_model(model, data).model_dump(exclude_none=True, exclude_unset=True)
        if "url" in parsed and "image_base64" in parsed:  # it read as "2 images sent"
            raise invalid("give `url` or `image_base64`, not both")
        images = []
        for key in ("url", "urls"):
            value = parsed.pop(key, None)
            for u in ([value] if isinstance(value, str) else value or []):
                images.append(ImageInput(u, url=u))
        for key in ("image_base64", "images_base64"):
            value = parsed.pop(key, None)
            for i, b in enumerate([value] if isinstance(value, str) else value or []):
                images.append(ImageInput(f"image_base64[{i}]", data=decode_base64(b, key)))
        fields = parsed
    else:
        data = await request.body()
        images, fields = [ImageInput(f"<request body, {len(data)} bytes>", data=data)], {}
    if not images:
        raise invalid("no image in the request: upload a file, send the image as the body, "
                      "or give a url / image_base64")
    if len(images) > cfg.max_batch:
        raise invalid(f"{len(images)} images in one request; this service takes at most "
                      f"{cfg.max_batch} (--max-batch): split the request")
    for img in images:
        if img.url is not None:
            if not cfg.allow_urls:
                raise invalid("this service does not download URLs (started with --no-urls): "
                              "upload the image instead")
            if not img.url.lower().startswith(("http://", "https://")):
                raise ImageLoadError(redact_uri(img.url), "only http:// and https:// URLs are supported")
        elif not img.data:
            raise ImageLoadError(img.name, "no data (0 bytes)")
    return Body(images, fields)


def _check_fields(fields: Mapping[str, Any], model: type[BaseModel], extra: Sequence[str]) -> None:
    allowed = set(model.model_fields) | set(extra)
    unknown = sorted(set(fields) - allowed - {"url"})
    if unknown:
        raise invalid(f"unknown form field(s) {unknown}; this endpoint takes {sorted(allowed)}")


def load_bytes(img: ImageInput, cfg: ServeConfig) -> bytes:
    """The image's bytes, downloading a URL under the upload size and URL time limits.

    Runs in a worker thread (a download blocks).
    """
    if img.url is None:
        assert img.data is not None
        return img.data
    return fetch_url(img.url, timeout=cfg.url_timeout, max_bytes=cfg.max_upload_bytes,
                     allow_private_urls=cfg.allow_private_urls)


#: images over this many pixels are decoded reduced (memory shared by every client); at or
#: below it they are decoded as the Python API decodes them
REDUCE_ABOVE_PIXELS = 16_000_000


def load_source(img: ImageInput, cfg: ServeConfig, preprocess: Mapping[str, Any]) -> Any:
    """What the Retriever reads for ``img``: its bytes (a named ``BytesIO``), or for a large
    image, its RGB pixels already reduced; runs in a worker thread.

    The pixel count is read from the header first: over ``cfg.max_pixels`` (``rsir serve
    --max-pixels``) the image is refused before any pixel is decoded, so a small file that
    unpacks to gigabytes costs the service nothing. An image over :data:`REDUCE_ABOVE_PIXELS`
    is decoded shrunk by the largest integer factor that keeps it at least twice the model's
    input size (``preprocess``; :func:`rsir_sdk.pixels.decode_reduced`); smaller images and
    TIFFs are read exactly as the Python API reads them, so their hits are exactly
    ``Retriever.search``'s (a 256-pixel scene for a 64-pixel model was reduced too, and its
    code differed from the in-process one by a few bits).
    """
    data = load_bytes(img, cfg)
    formats = _pillow_formats()
    size = image_size(data, formats)
    if size is not None and size[0] * size[1] > cfg.max_pixels:
        raise ImageLoadError(img.name, f"{size[0]}x{size[1]} pixels is over this service's "
                                       f"{cfg.max_pixels}-pixel limit (rsir serve --max-pixels)")
    if size is not None and size[0] * size[1] > REDUCE_ABOVE_PIXELS:
        rgb = decode_reduced(data, img.name, reduce_floor(preprocess), formats)
        if rgb is not None:  # read: the Retriever takes it as it is, with the photo's place
            return Raster(rgb, _photo_place(data, formats))
    buf = io.BytesIO(data)
    buf.name = img.name  # ImageLoadError names this, not "<n bytes>"
    return buf


def _photo_place(data: bytes, formats: list[str] | None) -> dict[str, Any]:
    """The EXIF place and time of an encoded photo, from its header (a 20 MP drone JPEG, read
    reduced, kept no footprint, where a small one and ``rsir index`` kept it)."""
    try:
        with quiet_decoding(), Image.open(io.BytesIO(data), formats=formats) as img:
            return exif_georef(img)
    except Exception:  # noqa: BLE001 - the pixels were read; a header it cannot parse has no place
        return {}


def reduce_floor(preprocess: Mapping[str, Any]) -> tuple[int, int]:
    """``(width, height)`` an image may be reduced to: twice what the model's preprocessing
    resizes it to, so the final resize still starts from more pixels than it keeps."""
    h, w = crop_size(preprocess)
    resize = preprocess.get("resize")
    if resize is not None:
        side = 2 * max(int(resize), h, w)
        return side, side
    return 2 * w, 2 * h


def _pillow_formats() -> list[str]:
    Image.init()
    return [f for f in DECODE_FORMATS if f in Image.OPEN]


def decode_base64(text: str, name: str) -> bytes:
    """Standard or URL-safe base64 to bytes; a 422 when it is neither."""
    try:
        s = text.strip()
        if "-" in s or "_" in s:
            return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(f"{name} is not valid base64: {exc}") from None


def split_codes(raw: bytes, bits: int) -> np.ndarray:
    """Concatenated packed codes to ``uint8 (n, bits/8)``; :class:`CodeLengthError` if ragged."""
    nbytes = bits // 8
    if not raw:
        raise CodeLengthError(f"no codes in the request: send n * {nbytes} bytes ({bits}-bit codes)")
    if len(raw) % nbytes:
        raise CodeLengthError(
            f"{len(raw)} bytes is not a whole number of {bits}-bit codes ({nbytes} bytes each): "
            f"codes from another encoder, or a truncated body")
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, nbytes).copy()


def split_records(raw: bytes, bits: int, fine_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated records of a packed code followed by its fine code (``bits/8 +
    fine_bits/8`` bytes each: 8 + 40 = 48 for 64-bit codes with the default 320-bit fine codes) to
    ``(codes uint8 (n, bits/8), fine uint8 (n, fine_bits/8))``; :class:`CodeLengthError` if
    ragged."""
    nbytes, fbytes = bits // 8, fine_bits // 8
    size = nbytes + fbytes
    if not raw:
        raise CodeLengthError(f"no codes in the request: send n * {size} bytes (each a {bits}-bit "
                              f"code, then its {fine_bits}-bit fine code)")
    if len(raw) % size:
        raise CodeLengthError(
            f"{len(raw)} bytes is not a whole number of records of {size} bytes ({nbytes} bytes "
            f"of a {bits}-bit code, then {fbytes} of its {fine_bits}-bit fine code): codes from "
            f"another encoder, or a truncated body")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, size)
    return records[:, :nbytes].copy(), records[:, nbytes:].copy()


def codes_from_base64(items: Sequence[str], bits: int, name: str = "codes",
                      kind: str = "codes") -> np.ndarray:
    """A list of base64 codes to ``uint8 (n, bits/8)``; :class:`CodeLengthError` on a bad
    length, naming the field (``name``) and what it holds (``kind``: codes, fine codes)."""
    nbytes = bits // 8
    out = np.empty((len(items), nbytes), dtype=np.uint8)
    for i, text in enumerate(items):
        raw = decode_base64(text, f"{name}[{i}]")
        if len(raw) != nbytes:
            raise CodeLengthError(
                f"{name}[{i}] has {len(raw)} bytes ({len(raw) * 8} bits); this collection holds "
                f"{bits}-bit {kind} ({nbytes} bytes)")
        out[i] = np.frombuffer(raw, dtype=np.uint8)
    return out


def search_options(request: Request, fields: Mapping[str, Any], cfg: ServeConfig,
                   bound: tuple[int, str], extra: Sequence[str] = (),
                   ) -> tuple[int, dict[str, Any] | str | None, int | None]:
    """``(k, filter, radius)`` from the body fields, else the query string; validated.

    ``bound``: the largest radius and the code it bounds (``Service.radius_bound``: the fine
    code in mode appearance). ``extra``: further query parameters the endpoint takes."""
    q = request.query_params
    unknown = sorted(set(q) - {"k", "filter", "radius", "mode", *GEO_KEYS, *extra})
    if unknown:
        raise invalid(f"unknown query parameter(s) {unknown}; this endpoint takes k, filter, "
                      f"radius, bbox, near, time, mode" + "".join(f", {e}" for e in extra))
    both = sorted(name for name in ("k", "radius", "filter", "mode") if name in fields and name in q)
    if both:  # which one was meant? the body's silently won
        raise invalid(f"{', '.join(both)} given both in the query string and in the body: give "
                      f"each once")
    k = fields.get("k", q.get("k", 10))
    if k == "":  # a form's blank box (query or form field; a JSON "" was refused), as
        k = 10   # radius, mode and near read
    radius = fields.get("radius", q.get("radius"))
    # body fields hold decoded JSON (a string there is an expression); the query holds JSON text
    filt = fields["filter"] if "filter" in fields else q.get("filter")
    k = _int(k, "k")
    if not 1 <= k <= cfg.max_k:
        raise InvalidInputError(f"k must be between 1 and {cfg.max_k} (this service's --max-k), got {k}")
    if radius is not None and radius != "":
        radius = store_values.radius(_int(radius, "radius"))  # the local checks, in order
        check_radius_length(radius, *bound)
    else:
        radius = None
    if "filter" not in fields and isinstance(filt, str):
        filt = _json_field(filt, "filter") if filt.strip() else None
    return k, check_filter(filt, cfg.allow_expressions), radius


def search_mode(request: Request, fields: Mapping[str, Any]) -> str:
    """The search ``mode`` from the body fields, else the query string: one of
    :data:`rsir_sdk.hits.SEARCH_MODES` (``"default"`` when not given); InvalidInputError (422,
    one line) otherwise, the class :meth:`rsir_sdk.Retriever.search` raises."""
    mode = fields["mode"] if "mode" in fields else request.query_params.get("mode")
    if mode is None or mode == "":
        return "default"
    if not isinstance(mode, str) or mode.strip() not in SEARCH_MODES:
        raise InvalidInputError(f"mode must be one of {', '.join(SEARCH_MODES)}, "
                                f"got {one_line(repr(mode), 40)}")
    return mode.strip()


def flag(value: Any, name: str) -> bool:
    """A yes/no query parameter: ``1``/``true``/``yes`` or ``0``/``false``/``no`` (422
    otherwise); absent is no."""
    if value is None or value == "":
        return False
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise invalid(f"{name} must be 1/true/yes or 0/false/no, got {one_line(repr(value), 40)}")


def search_where(request: Request, fields: Mapping[str, Any]) -> GeoFilter:
    """The place and period of a search (``bbox``, ``near``, ``time``) from the body fields,
    else the query string, parsed by :func:`rsir_sdk.serve.geo_wire.geo_from_wire` (422
    ``InvalidInputError``, one line, when a value is bad)."""
    q = request.query_params
    return geo_from_wire({key: fields[key] if key in fields else q.get(key) for key in GEO_KEYS})


def _int(value: Any, name: str, strict: bool = False) -> int:
    """``value`` as an int: a JSON integer, or (``strict=False``: form fields and the query
    string, which only hold text) decimal digits; InvalidInputError (422) otherwise, the class
    :meth:`rsir_sdk.Retriever.search` raises for ``k=True``, ``k=1.0`` or ``k="5"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not strict and isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]{1,40}\s*", value):
        return int(value)  # a long one is still a whole number: its range check says what is wrong
    raise InvalidInputError(f"{name} must be an integer, got {type(value).__name__} "
                            f"{one_line(repr(value), 40)}")


def check_filter(filt: Any, expressions: bool = False) -> dict[str, Any] | str | None:
    """A dict filter with plain keys and scalar (or list of scalar) values, or (when the
    service allows them: ``expressions``) a Milvus expression string; 422 otherwise.

    Dict values reach Milvus only as digests; an expression string is the client's own filter,
    as :meth:`rsir_sdk.Retriever.search` takes it (a filter only reads: it cannot write, and the
    store turns a bad one into ``InvalidInputError``). ``rsir serve --no-expressions`` refuses
    them, leaving no client text in any Milvus expression.
    """
    if filt is None or filt == {} or (isinstance(filt, str) and not filt.strip()):
        return None
    if isinstance(filt, str) and expressions:
        return filt.strip()
    if not isinstance(filt, dict):
        raise invalid('filter must be a JSON object such as {"label": "Forest"}' + (
            ' or a Milvus expression string' if expressions else
            ' (expression strings are refused by this service: --no-expressions)'))
    for key, value in filt.items():  # the cheap bound first: a million values are not digested
        if isinstance(value, list) and len(value) > MAX_FILTER_VALUES:
            raise invalid(f"filter {key!r}: a list needs 1..{MAX_FILTER_VALUES} values")
    build_filter(filt)  # keys and values as the local store checks them, in its words (a
    # metadata key is any text, "cloud-cover" too: it reaches Milvus only as a digest); 422
    return dict(filt)


def column(fields: Mapping[str, Any], name: str, n: int, kind: type = str) -> list | None:
    """An optional per-item column (``labels``, ``paths``, ``metadata``) of length ``n``."""
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n:
        raise invalid(f"{name} must be a list of {n} values (one per item)")
    for v in value:
        if v is not None and not isinstance(v, kind):
            raise invalid(f"{name} must hold {kind.__name__} values")
    return value
