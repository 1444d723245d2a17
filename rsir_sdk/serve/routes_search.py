"""Search endpoints: by image (upload, raw body, URL, base64), batch, and by packed codes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..hits import hit_to_json
from .inputs import (
    codes_from_base64,
    invalid,
    media_type,
    parse_model,
    read_images,
    read_json,
    search_options,
    search_where,
    split_codes,
)
from .routing import ErrorRoute, errors_doc, json_answer, multi_body, require_read, service_of
from .schemas import BatchSearchJSON, CodesSearchJSON, HitsOut, ImageSearchJSON, ResultsOut
from .service import ENCODER_HEADER

router = APIRouter(prefix="/v1", route_class=ErrorRoute, dependencies=[Depends(require_read)],
                   tags=["search"])

GEO_FORM = {
    "bbox": {"type": "string", "description": "west,south,east,north (or a JSON array)"},
    "near": {"type": "string", "description": "lon,lat,metres (or a JSON array)"},
    "time": {"type": "string", "description": "start/end, ISO 8601, '..' open (or a JSON array)"},
}
IMAGE_FORM = {
    "image": {"type": "string", "format": "binary", "description": "the image file"},
    "k": {"type": "integer"}, "radius": {"type": "integer"},
    "filter": {"type": "string", "description": 'JSON object, e.g. {"label": "Forest"}'},
    "url": {"type": "string", "description": "instead of a file: a URL the service downloads"},
    **GEO_FORM,
}
BATCH_FORM = {
    "image": {"type": "array", "items": {"type": "string", "format": "binary"},
              "description": "image files (repeat the field)"},
    "k": {"type": "integer"}, "radius": {"type": "integer"},
    "filter": {"type": "string", "description": "JSON object"},
    **GEO_FORM,
}
GEO_DOC = (" Place and period: `bbox` (west,south,east,north; footprints meeting the box), "
           "`near` (lon,lat,metres; great-circle) and `time` (start/end, ISO 8601) in the query "
           "string, a form field or the JSON body; items without a footprint (time) are left "
           "out of place- (period-) filtered searches.")


@router.post(
    "/search", response_model=HitsOut, summary="Search by one image",
    responses=errors_doc(401, 409, 413, 422, 503, 504),
    openapi_extra=multi_body(ImageSearchJSON, form=IMAGE_FORM),
    description=(
        "Hamming top-k for one image: a multipart upload (field `image`), the image as the raw "
        "body (`Content-Type: image/jpeg` etc.; `k`, `filter`, `radius` in the query string), "
        "or JSON with `url` (downloaded by the service) or `image_base64`." + GEO_DOC),
)
async def search_image(request: Request) -> JSONResponse:
    service = service_of(request)
    body = await read_images(request, service.config, ImageSearchJSON)
    if len(body.images) != 1:
        raise invalid(f"{len(body.images)} images sent to /v1/search: use /v1/search/batch")
    k, filt, radius = search_options(request, body.fields, service.config, service.bits)
    where = search_where(request, body.fields)
    results = await service.gate.run(service.search_images, body.images, k, filt, radius, where)
    return json_answer({"hits": [hit_to_json(h) for h in results[0]]})


@router.post(
    "/search/batch", response_model=ResultsOut, summary="Search by several images",
    responses=errors_doc(401, 409, 413, 422, 503, 504),
    openapi_extra=multi_body(BatchSearchJSON, form=BATCH_FORM, binary=()),
    description="One hit list per image, in order (multipart files, or JSON `urls` / "
                "`images_base64`); at most max_batch images." + GEO_DOC,
)
async def search_batch(request: Request) -> JSONResponse:
    service = service_of(request)
    body = await read_images(request, service.config, BatchSearchJSON)
    k, filt, radius = search_options(request, body.fields, service.config, service.bits)
    where = search_where(request, body.fields)
    results = await service.gate.run(service.search_images, body.images, k, filt, radius, where)
    return json_answer({"results": [[hit_to_json(h) for h in hits] for hits in results]})


@router.post(
    "/search/codes", response_model=ResultsOut, summary="Search by packed codes (edge devices)",
    responses=errors_doc(401, 409, 413, 422, 503, 504),
    openapi_extra=multi_body(CodesSearchJSON, binary=("application/octet-stream",),
                             binary_doc="n packed codes back to back (n * bits/8 bytes)"),
    description=(
        "The edge path: codes made by the same encoder elsewhere. Raw bytes "
        "(`application/octet-stream`, n * bits/8 bytes; `k`, `filter`, `radius` in the query) "
        "or JSON `code` / `codes` (base64). Send `X-Rsir-Encoder-Id: <encoder_id>` to have "
        "codes of another encoder refused (409) instead of searched." + GEO_DOC),
)
async def search_codes(request: Request) -> JSONResponse:
    service = service_of(request)
    service.check_client_encoder(request.headers.get(ENCODER_HEADER))
    if media_type(request) == "application/json":
        parsed = parse_model(CodesSearchJSON, await read_json(request))
        items = ([parsed.code] if parsed.code else []) + list(parsed.codes or [])
        if not items:
            raise invalid("give `code` or `codes` (base64)")
        fields = parsed.model_dump(exclude_none=True,
                                   include={"k", "filter", "radius", "bbox", "near", "time"})
        codes = codes_from_base64(items, service.bits)
    else:
        fields = {}
        codes = split_codes(await request.body(), service.bits)
    if len(codes) > service.config.max_codes:
        raise invalid(f"{len(codes)} codes in one request; at most {service.config.max_codes}")
    k, filt, radius = search_options(request, fields, service.config, service.bits)
    where = search_where(request, fields)
    results = await service.gate.run(service.search_codes, codes, k, filt, radius, where)
    return json_answer({"results": [[hit_to_json(h) for h in hits] for hits in results]})
