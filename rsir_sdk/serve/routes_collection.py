"""Collection endpoints (write token): index a server-side archive, add the bundle's learned
codes, prepare the collection for search. The remote side of
:meth:`RemoteRetriever.index <rsir_sdk.serve.client.RemoteRetriever.index>`,
``add_learned_codes`` and ``prepare_for_search``.

These run one long call each in a worker of the service's gate, under their own time limit
(:data:`LONG_TIMEOUT`, not the per-request one): an ingestion takes as long as its archive.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .routing import ErrorRoute, errors_doc, json_answer, require_write, service_of
from .schemas import IndexJSON, PrepareJSON, SummaryOut, WrittenOut

#: seconds an index or prepare request may run in the service (504 after)
LONG_TIMEOUT = 6 * 3600.0

writes = APIRouter(prefix="/v1", route_class=ErrorRoute, dependencies=[Depends(require_write)],
                   tags=["collection"])


@writes.post(
    "/index", response_model=SummaryOut, summary="Index an archive inside the archive root",
    responses=errors_doc(401, 403, 404, 422, 503, 504),
    description="Encode every image of a folder or CSV manifest that lies inside the service's "
                "archive root into the collection (resumable: ids present are skipped). Open "
                "only when the service runs with `--allow-index` (403 otherwise); paths outside "
                "the root answer 404 like missing ones. `options`: `rsir_sdk.IngestOptions` as "
                "JSON; `engine`, `address`, `bulk_dir`, `ray`, `prune` and a higher `max_pixels` are "
                "refused (the service decides).",
)
async def index(request: Request, payload: IndexJSON) -> JSONResponse:
    service = service_of(request)
    summary = await service.gate.run(service.index, payload.archive, payload.options,
                                     timeout=LONG_TIMEOUT, writes=True)
    return json_answer(summary)


@writes.post(
    "/learned", response_model=WrittenOut, summary="Add the bundle's learned database codes",
    responses=errors_doc(401, 403, 500, 503, 504),
    description="The served bundle's learned database codes (AHCL's V) go into the collection "
                "with metadata `{\"source\": \"learned\"}`; a bundle without them answers "
                "`BundleError`.",
)
async def learned(request: Request) -> JSONResponse:
    service = service_of(request)
    written, count = await service.gate.run(service.add_learned_codes, timeout=LONG_TIMEOUT,
                                            writes=True)
    return json_answer({"written": written, "count": count})


@writes.post(
    "/prepare", summary="Leave the collection ready to search at full speed",
    responses=errors_doc(401, 403, 422, 503, 504),
    description="Seal, index and load a server collection (a no-op `{}` on Milvus Lite); "
                "answers the seconds of each step.",
)
async def prepare(request: Request, payload: PrepareJSON) -> JSONResponse:
    service = service_of(request)
    limit = LONG_TIMEOUT if payload.timeout is None else payload.timeout + 60.0
    done = await service.gate.run(service.prepare_for_search, payload.timeout, timeout=limit)
    return json_answer(done)
