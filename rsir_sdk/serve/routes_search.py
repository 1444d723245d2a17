"""Search endpoints: by image (upload, raw body, URL, base64), batch, by packed codes (with
their fine codes), and the near-duplicate groups of the collection."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..call_checks import check_radius_length
from ..errors import InvalidInputError
from ..geo import GeoFilter
from ..hits import hit_to_json
from .geo_wire import geo_from_wire
from .inputs import (
    _int,
    check_filter,
    codes_from_base64,
    flag,
    invalid,
    media_type,
    parse_model,
    read_images,
    read_json,
    search_mode,
    search_options,
    search_where,
    split_codes,
    split_records,
)
from .routing import (
    ErrorRoute,
    errors_doc,
    json_answer,
    multi_body,
    require_read,
    require_write,
    service_of,
)
from .schemas import (
    BatchSearchJSON,
    CodesSearchJSON,
    DuplicatesJSON,
    DuplicatesOut,
    HitsOut,
    ImageSearchJSON,
    ResultsOut,
)
from .service import ENCODER_HEADER, Service

#: seconds a duplicates request may run in the service (it reads the whole collection)
DUPLICATES_TIMEOUT = 6 * 3600.0

router = APIRouter(prefix="/v1", route_class=ErrorRoute, dependencies=[Depends(require_read)],
                   tags=["search"])

GEO_FORM = {
    "bbox": {"type": "string", "description": "west,south,east,north (or a JSON array)"},
    "near": {"type": "string", "description": "lon,lat,metres (or a JSON array)"},
    "time": {"type": "string", "description": "start/end, ISO 8601, '..' open (or a JSON array)"},
}
MODE_FORM = {"mode": {"type": "string", "enum": ["default", "appearance"],
                      "description": "default, or appearance (the fine code alone)"}}
IMAGE_FORM = {
    "image": {"type": "string", "format": "binary", "description": "the image file"},
    "k": {"type": "integer"}, "radius": {"type": "integer"}, **MODE_FORM,
    "filter": {"type": "string", "description": 'JSON object, e.g. {"label": "Forest"}'},
    "url": {"type": "string", "description": "instead of a file: a URL the service downloads"},
    **GEO_FORM,
}
BATCH_FORM = {
    "image": {"type": "array", "items": {"type": "string", "format": "binary"},
              "description": "image files (repeat the field)"},
    "k": {"type": "integer"}, "radius": {"type": "integer"}, **MODE_FORM,
    "filter": {"type": "string", "description": "JSON object"},
    **GEO_FORM,
}
GEO_DOC = (" Place and period: `bbox` (west,south,east,north; footprints meeting the box), "
           "`near` (lon,lat,metres; great-circle) and `time` (start/end, ISO 8601) in the query "
           "string, a form field or the JSON body; items without a footprint (time) are left "
           "out of place- (period-) filtered searches.")
MODE_DOC = (" `mode`: `default` (retrieval-code distance, then fine-code distance when the "
            "collection keeps fine codes, then the id digest; near-duplicates, fine distance "
            "within 12 of 128 bits or clearly the nearest (ratio test), first) or `appearance` (the fine code "
            "alone; `radius` bounds the fine distance; 409 on a collection without fine codes). "
            "Hits carry `fine_distance` when the fine code took part.")


@router.post(
    "/search", response_model=HitsOut, summary="Search by one image",
    responses=errors_doc(401, 409, 413, 422, 503, 504),
    openapi_extra=multi_body(ImageSearchJSON, form=IMAGE_FORM),
    description=(
        "Hamming top-k for one image: a multipart upload (field `image`), the image as the raw "
        "body (`Content-Type: image/jpeg` etc.; `k`, `filter`, `radius` in the query string), "
        "or JSON with `url` (downloaded by the service) or `image_base64`." + GEO_DOC
        + MODE_DOC),
)
async def search_image(request: Request) -> JSONResponse:
    service = service_of(request)
    body = await read_images(request, service.config, ImageSearchJSON)
    if len(body.images) != 1:
        raise invalid(f"{len(body.images)} images sent to /v1/search: use /v1/search/batch")
    mode = search_mode(request, body.fields)
    k, filt, radius = search_options(request, body.fields, service.config,
                                     service.radius_bound(mode))
    where = search_where(request, body.fields)
    results = await service.gate.run(service.search_images, body.images, k, filt, radius, where,
                                     mode)
    return json_answer({"hits": [hit_to_json(h) for h in results[0]]})


@router.post(
    "/search/batch", response_model=ResultsOut, summary="Search by several images",
    responses=errors_doc(401, 409, 413, 422, 503, 504),
    openapi_extra=multi_body(BatchSearchJSON, form=BATCH_FORM, binary=()),
    description="One hit list per image, in order (multipart files, or JSON `urls` / "
                "`images_base64`); at most max_batch images." + GEO_DOC + MODE_DOC,
)
async def search_batch(request: Request) -> JSONResponse:
    service = service_of(request)
    body = await read_images(request, service.config, BatchSearchJSON)
    mode = search_mode(request, body.fields)
    k, filt, radius = search_options(request, body.fields, service.config,
                                     service.radius_bound(mode))
    where = search_where(request, body.fields)
    results = await service.gate.run(service.search_images, body.images, k, filt, radius, where,
                                     mode)
    return json_answer({"results": [[hit_to_json(h) for h in hits] for hits in results]})


@router.post(
    "/search/codes", response_model=ResultsOut, summary="Search by packed codes (edge devices)",
    responses=errors_doc(401, 409, 413, 422, 503, 504),
    openapi_extra=multi_body(CodesSearchJSON, binary=("application/octet-stream",),
                             binary_doc="n packed codes back to back (n * bits/8 bytes); with "
                                        "`fine=1`, n records of a code then its fine code "
                                        "(n * (bits/8 + fine_bits/8) bytes)"),
    description=(
        "The edge path: codes made by the same encoder elsewhere. Raw bytes "
        "(`application/octet-stream`, n * bits/8 bytes; `k`, `filter`, `radius`, `mode` in the "
        "query; with `fine=1` in the query each code is followed by its fine code: 8 + 40 = 48 "
        "bytes for a 64-bit code and the default 320-bit fine code) or JSON `code` / `codes` (base64) "
        "with `fine_code` / `fine_codes` beside them. Send `X-Rsir-Encoder-Id: <encoder_id>` "
        "to have codes of another encoder refused (409) instead of searched." + GEO_DOC
        + MODE_DOC),
)
async def search_codes(request: Request) -> JSONResponse:
    service = service_of(request)
    service.check_client_encoder(request.headers.get(ENCODER_HEADER))
    if media_type(request) == "application/json":
        fields, codes, fine = _json_codes(service, await read_json(request))
    else:
        fields = {}
        if flag(request.query_params.get("fine"), "fine"):
            codes, fine = split_records(await request.body(), service.bits, service.fine_width())
        else:
            codes, fine = split_codes(await request.body(), service.bits), None
    if len(codes) > service.config.max_codes:
        raise invalid(f"{len(codes)} codes in one request; at most {service.config.max_codes}")
    mode = search_mode(request, fields)
    k, filt, radius = search_options(request, fields, service.config, service.radius_bound(mode),
                                     extra=("fine",))
    if mode == "appearance" and fine is None:
        raise InvalidInputError("mode=appearance searches by the fine code: send each code's "
                                "fine code (`fine_code` / `fine_codes` in JSON, or `?fine=1` "
                                "with records of code and fine code)")
    if len(codes) * k > service.config.max_hits:
        raise invalid(f"{len(codes)} codes x k={k} would answer {len(codes) * k} hits; at most "
                      f"{service.config.max_hits} in one request: send fewer codes per request")
    where = search_where(request, fields)
    results = await service.gate.run(service.search_codes, codes, k, filt, radius, where, fine,
                                     mode)
    return json_answer({"results": [[hit_to_json(h) for h in hits] for hits in results]})


def _json_codes(service: Service, data: Any) -> tuple[dict[str, Any], np.ndarray,
                                                      np.ndarray | None]:
    """``(search fields, codes, fine codes or None)`` of a JSON codes search."""
    parsed = parse_model(CodesSearchJSON, data)
    if parsed.code is not None and parsed.codes is not None:
        raise invalid("give `code` (one) or `codes` (a list), not both")
    items = ([parsed.code] if parsed.code else []) + list(parsed.codes or [])
    if not items:
        raise invalid("give `code` (base64) or `codes` (a non-empty list of base64 codes)")
    fines = ([parsed.fine_code] if parsed.fine_code else []) + list(parsed.fine_codes or [])
    if bool(parsed.code) != bool(parsed.fine_code) and fines:
        raise invalid("give `fine_code` with `code` (and `fine_codes` with `codes`)")
    if fines and len(fines) != len(items):
        raise invalid(f"{len(fines)} fine codes for {len(items)} codes: give one per code")
    fields = parsed.model_dump(exclude_none=True, exclude_unset=True,  # what the body holds
                               include={"k", "filter", "radius", "bbox", "near", "time", "mode"})
    codes = codes_from_base64(items, service.bits)
    field = "fine_code" if parsed.fine_code and not parsed.fine_codes else "fine_codes"
    fine = codes_from_base64(fines, service.fine_width(), field, "fine codes") if fines else None
    return fields, codes, fine


@router.post(
    "/duplicates", response_model=DuplicatesOut, summary="Groups of near-identical items",
    responses=errors_doc(401, 403, 409, 422, 503, 504), dependencies=[Depends(require_write)],
    openapi_extra={"requestBody": {"required": False, "content": {
        "application/json": {"schema": DuplicatesJSON.model_json_schema()}}}},
    description=(
        "Groups of >= 2 items whose fine codes lie within `radius` (Hamming, inclusive) of "
        "each other, linked transitively: the same scene stored twice, re-encoded, lightly "
        "cropped. Ids sorted in each group, largest group first. JSON body (all optional): "
        "`radius` (null: the service's default, answered), `filter`, `bbox`, `near`, `time` "
        "as for a search. Reads the whole (filtered) collection, so it takes the write token "
        "(as indexing does: a read token must not hold a worker for hours); 409 on a "
        "collection without fine codes."),
)
async def duplicates(request: Request) -> JSONResponse:
    service = service_of(request)
    parsed = parse_model(DuplicatesJSON, await read_json(request) or {})
    radius = parsed.radius
    if radius is not None:
        radius = _int(radius, "radius", strict=True)
        check_radius_length(radius, *service.radius_bound("appearance"))
    filt = check_filter(parsed.filter, service.config.allow_expressions)
    where: GeoFilter = geo_from_wire(parsed.model_dump(include={"bbox", "near", "time"}))
    groups = await service.gate.run(service.duplicates, radius, filt, where,
                                     timeout=DUPLICATES_TIMEOUT)
    used = radius if radius is not None else service.default_duplicate_radius()
    return json_answer({"groups": [list(g) for g in groups], "radius": used})
