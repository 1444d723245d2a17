"""Info, health, readiness, metrics, hit images and the search page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from .errors import ServiceBusyError
from .files import media_type, resolve_in_root, tiff_thumbnail
from .routing import ErrorRoute, errors_doc, json_answer, require_read, service_of
from .schemas import InfoOut

STATIC = Path(__file__).resolve().parent / "static"

reads = APIRouter(route_class=ErrorRoute, dependencies=[Depends(require_read)], tags=["service"])
public = APIRouter(route_class=ErrorRoute, tags=["service"])


@reads.get("/v1/info", response_model=InfoOut, summary="What the service serves",
           responses=errors_doc(401, 503, 504))
async def info(request: Request) -> JSONResponse:
    service = service_of(request)
    return json_answer(await service.gate.run(service.info))


@reads.get("/v1/image", summary="The image of a hit, from the archive root only",
           responses={200: {"content": {"image/*": {}}}, **errors_doc(401, 404)},
           description="`path`: a hit's path (absolute inside the archive root, or relative to "
                       "it). Paths resolving outside the root, missing files and non-images "
                       "all answer the same 404. TIFFs come back as PNG thumbnails.")
async def hit_image(request: Request, path: str) -> Response:
    service = service_of(request)
    real = resolve_in_root(service.archive_root, path)
    headers = {"Cache-Control": "private, max-age=300"}
    if real.suffix.lower() in (".tif", ".tiff"):
        png = await service.gate.run(tiff_thumbnail, real)
        return Response(png, media_type="image/png", headers=headers)
    return FileResponse(real, media_type=media_type(real), headers=headers)


@reads.get("/metrics", summary="Prometheus metrics (text format 0.0.4)",
           response_class=PlainTextResponse, responses=errors_doc(401))
async def metrics(request: Request) -> PlainTextResponse:
    service = service_of(request)
    gate = service.gate
    if gate.running < gate.concurrency and gate.waiting == 0:
        # only when a worker is free: a scrape must never queue behind searches (the count is
        # also refreshed after every write this service makes)
        try:
            await gate.run(service.refresh_count, timeout=2.0)
        except Exception:  # busy or slow store: serve the last known count
            pass
    text = service.metrics.render({
        "rsir_work_running": gate.running,
        "rsir_work_waiting": gate.waiting,
        "rsir_work_rejected_total": gate.rejected,
        "rsir_work_timeouts_total": gate.timed_out,
        "rsir_work_concurrency": gate.concurrency,
        "rsir_work_max_queue": gate.max_queue,
    })
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@public.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> JSONResponse:
    return json_answer({"status": "ok"})


@public.get("/readyz", summary="Readiness: the store answers and the service takes work",
            responses=errors_doc(503))
async def readyz(request: Request) -> JSONResponse:
    service = service_of(request)
    if service.shutting_down:
        raise ServiceBusyError("the service is shutting down", retry_after=service.config.retry_after)
    n = await service.gate.run(service.refresh_count, timeout=5.0)
    if n is None:
        from ..errors import StoreError

        raise StoreError(f"collection {service.collection!r} does not answer")
    return json_answer({"status": "ready", "collection": service.collection, "count": n})


@public.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")
