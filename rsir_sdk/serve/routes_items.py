"""Item endpoints: add images or codes, get and delete by id, count."""

from __future__ import annotations

from typing import Any, Mapping

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.convertors import Convertor, register_url_convertor

from ..errors import InvalidInputError
from ..hits import item_to_json
from .geo_wire import footprints_from_wire, geo_from_wire, times_from_wire
from .inputs import (
    check_filter,
    codes_from_base64,
    column,
    invalid,
    loads_json,
    parse_model,
    read_images,
    read_json,
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
    AddCodesJSON,
    AddImagesJSON,
    CountJSON,
    CountOut,
    DeletedOut,
    IdsJSON,
    ItemOut,
    ItemsOut,
    WrittenOut,
)
from .service import ENCODER_HEADER, ItemColumns


class ExactIdConvertor(Convertor[str]):
    """An item id in a path, taken whole: any characters, ``/`` and line breaks included.

    Starlette's ``path`` convertor is ``.*``: its ``.`` stops at a newline and the route's
    closing ``$`` matches before a final one, so ``DELETE /v1/items/victim%0A`` acted on
    ``victim``. ``[\\s\\S]+`` consumes every character, so the id is the one asked for.
    """

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("item_id", ExactIdConvertor())

reads = APIRouter(prefix="/v1", route_class=ErrorRoute, dependencies=[Depends(require_read)],
                  tags=["items"])
writes = APIRouter(prefix="/v1", route_class=ErrorRoute, dependencies=[Depends(require_write)],
                   tags=["items"])

ADD_FORM = {
    "image": {"type": "array", "items": {"type": "string", "format": "binary"},
              "description": "image files, in the order of ids (repeat the field)"},
    "ids": {"type": "string", "description": 'JSON array of ids, e.g. ["a", "b"]'},
    "labels": {"type": "string", "description": "JSON array"},
    "paths": {"type": "string", "description": "JSON array (paths under the archive root)"},
    "metadata": {"type": "string", "description": "JSON array of objects"},
    "footprints": {"type": "string", "description": "JSON array: per item null, [w, s, e, n] "
                                                    "or [lon, lat]"},
    "times": {"type": "string", "description": "JSON array: per item null, ISO 8601 or epoch s"},
}


def _columns(fields: Mapping[str, Any], ids: list[str]) -> ItemColumns:
    """The optional per-item columns of a write, checked before any work is queued."""
    n = len(ids)
    return ItemColumns(labels=column(fields, "labels", n), paths=column(fields, "paths", n),
                       metadata=column(fields, "metadata", n, dict),
                       footprints=footprints_from_wire(fields.get("footprints"), ids),
                       times=times_from_wire(fields.get("times"), ids))


def _ids(values: object, limit: int) -> list[str]:
    if not isinstance(values, list) or not values:
        raise invalid("ids must be a non-empty JSON array of strings")
    if len(values) > limit:
        raise invalid(f"{len(values)} ids in one request; at most {limit}: split the request")
    if not all(isinstance(v, str) for v in values):
        raise invalid("ids must be strings")
    return list(values)


@writes.post(
    "/items", response_model=WrittenOut, summary="Add images (encoded by the service)",
    responses=errors_doc(401, 403, 409, 413, 422, 503, 504),
    openapi_extra=multi_body(AddImagesJSON, form=ADD_FORM, binary=()),
    description="Encode and upsert images with their ids (and optional labels, paths under the "
                "archive root, metadata, footprints, times). Nothing is written when one image "
                "is unreadable.",
)
async def add_images(request: Request) -> JSONResponse:
    service = service_of(request)
    body = await read_images(request, service.config, AddImagesJSON)
    n = len(body.images)
    ids = _ids(body.fields.get("ids"), service.config.max_batch)
    if len(ids) != n:
        raise invalid(f"{n} images but {len(ids)} ids")
    written, count = await service.gate.run(service.add_images, body.images, ids,
                                            _columns(body.fields, ids), writes=True)
    return json_answer({"written": written, "count": count})


@writes.post(
    "/codes", response_model=WrittenOut, summary="Add packed codes (edge devices)",
    responses=errors_doc(401, 403, 409, 413, 422, 503, 504),
    description="Upsert codes made elsewhere with the served encoder (base64, bits/8 bytes "
                "each) with their fine codes (`fine_codes`, base64, fine_bits/8 bytes each: 16 "
                "for 128 bits; required when the collection keeps fine codes, see `fine_bits` "
                "in GET /v1/info). `X-Rsir-Encoder-Id` is checked against the collection's "
                "encoder.",
)
async def add_codes(request: Request, payload: AddCodesJSON) -> JSONResponse:
    service = service_of(request)
    service.check_client_encoder(request.headers.get(ENCODER_HEADER))
    ids = _ids(payload.ids, service.config.max_codes)
    data = payload.model_dump()
    n = len(ids)
    if len(payload.codes) != n:
        raise invalid(f"{len(payload.codes)} codes but {n} ids")
    codes = codes_from_base64(payload.codes, service.bits)
    fine = None
    kept = getattr(service.retriever.store, "fine_bits", None)
    if payload.fine_codes is None and kept:
        raise InvalidInputError(f"collection {service.collection!r} keeps {kept}-bit fine codes: "
                                f"send `fine_codes` (base64, one per id) beside `codes`")
    if payload.fine_codes is not None:
        if len(payload.fine_codes) != n:
            raise invalid(f"{len(payload.fine_codes)} fine codes but {n} ids")
        fine = codes_from_base64(payload.fine_codes, service.fine_width(), "fine_codes")
    written, count = await service.gate.run(service.add_codes, codes, ids, _columns(data, ids),
                                            fine, writes=True)
    return json_answer({"written": written, "count": count})


@writes.post("/items/delete", response_model=DeletedOut, summary="Delete items by id",
             responses=errors_doc(401, 403, 422, 503, 504))
async def delete_items(request: Request, payload: IdsJSON) -> JSONResponse:
    service = service_of(request)
    ids = _ids(payload.ids, service.config.max_codes)
    deleted, count = await service.gate.run(service.delete, ids, writes=True)
    return json_answer({"deleted": deleted, "count": count})


@writes.delete("/items/{item_id:item_id}", response_model=DeletedOut, summary="Delete one item",
               responses=errors_doc(401, 403, 503, 504))
async def delete_item(request: Request, item_id: str) -> JSONResponse:
    service = service_of(request)
    deleted, count = await service.gate.run(service.delete, [item_id], writes=True)
    return json_answer({"deleted": deleted, "count": count})


@reads.post("/items/get", response_model=ItemsOut, summary="Get items by id",
            responses=errors_doc(401, 422, 503, 504),
            description="Stored items (code base64, label, path, metadata); missing ids are "
                        "left out, the rest keep the order asked.")
async def get_items(request: Request, payload: IdsJSON) -> JSONResponse:
    service = service_of(request)
    ids = _ids(payload.ids, service.config.max_codes)
    items = await service.gate.run(service.get, ids)
    return json_answer({"items": [item_to_json(it) for it in items]})


@reads.get("/items/{item_id:item_id}", response_model=ItemOut, summary="Get one item",
           responses=errors_doc(401, 404, 503, 504))
async def get_item(request: Request, item_id: str) -> JSONResponse:
    from .errors import NotFoundError

    service = service_of(request)
    items = await service.gate.run(service.get, [item_id])
    if not items:
        raise NotFoundError(f"no item with id {item_id[:80]!r}", 404, "NotFoundError")
    return json_answer(item_to_json(items[0]))


@reads.get("/count", response_model=CountOut, summary="Count items",
           responses=errors_doc(401, 409, 422, 503, 504),
           description='`filter` (optional): a JSON object, e.g. `{"label": "Forest"}`. '
                       '`bbox`, `near`, `time` (optional): place and period as for a search.')
async def count(request: Request, filter: str | None = None, bbox: str | None = None,
                near: str | None = None, time: str | None = None) -> JSONResponse:
    service = service_of(request)
    filt = None
    if filter:
        filt = check_filter(loads_json(filter, "filter"), service.config.allow_expressions)
    where = geo_from_wire({"bbox": bbox, "near": near, "time": time})
    n = await service.gate.run(service.count, filt, where)
    return json_answer({"count": n})


@reads.post("/count", response_model=CountOut, summary="Count items (JSON body)",
            responses=errors_doc(401, 409, 422, 503, 504),
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/json": {"schema": CountJSON.model_json_schema()}}}},
            description="`GET /v1/count` with its parameters in a JSON body.")
async def count_json(request: Request) -> JSONResponse:
    service = service_of(request)
    parsed = parse_model(CountJSON, await read_json(request))
    filt = check_filter(parsed.filter, service.config.allow_expressions)
    where = geo_from_wire(parsed.model_dump(include={"bbox", "near", "time"}))
    n = await service.gate.run(service.count, filt, where)
    return json_answer({"count": n})

