"""``create_app``: the ASGI application of ``rsir serve`` (FastAPI), around one Retriever.

>>> from rsir_sdk import Retriever
>>> from rsir_sdk.serve import ServeConfig, create_app
>>> app = create_app(Retriever("bundle/", uri="./rsir.db", collection="scenes"),
...                  ServeConfig(read_token="r", write_token="w"))        # doctest: +SKIP
>>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)     # doctest: +SKIP

The app owns the Retriever: one process serves the collection (a Milvus Lite file admits one
process), blocking work runs in a bounded thread pool, and on shutdown in-flight work ends
before the Retriever closes. Endpoints, auth, limits and errors: ``docs/serve.md`` and the
OpenAPI schema at ``/openapi.json``.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from .. import __version__
from ..retriever import Retriever
from .config import ServeConfig
from .errors import error_body
from .limits import BodyLimitMiddleware
from .routing import error_response
from .service import Service

log = logging.getLogger("rsir_sdk.serve")
access_log = logging.getLogger("rsir_sdk.serve.access")

#: the page may load only its own files: no network access, no inline script
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


def create_app(retriever: Retriever, config: ServeConfig | None = None, *,
               owns_retriever: bool = True, shutdown_timeout: float | None = None) -> FastAPI:
    """The service's ASGI app for ``retriever`` under ``config`` (defaults: no tokens, limits on).

    ``owns_retriever``: close it at shutdown. ``shutdown_timeout``: seconds to wait for running
    work at shutdown before closing the store anyway (default: the request time limit + 5).
    """
    from . import routes_admin, routes_collection, routes_items, routes_search

    service = Service(retriever, config, owns_retriever=owns_retriever)
    grace = shutdown_timeout if shutdown_timeout is not None else service.config.request_timeout + 5

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.refresh_count()
        log.info("serving collection %s (%s, %d bits, fine codes: %s, encoder %s; %s items)",
                 service.collection, service.bundle.method, service.bits,
                 getattr(service.retriever.store, "fine_bits", None) or "none",
                 service.bundle.encoder_id, service.metrics.items)
        try:
            yield
        finally:
            log.info("shutting down: waiting for running work, then closing the store")
            service.close(grace)

    app = FastAPI(
        title="rsir serve", version=__version__, lifespan=lifespan,
        docs_url=None, redoc_url=None, redirect_slashes=False,  # no Host-derived redirects
        description="Remote sensing image retrieval over HTTP: search a Milvus collection of "
                    "binary hash codes by image or by packed codes. Errors are JSON "
                    '`{"error": kind, "message": text}`; kinds are the Python exception classes.',
    )
    app.state.service = service
    for router in (routes_search.router, routes_items.reads, routes_items.writes,
                   routes_collection.writes, routes_admin.reads, routes_admin.public):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=routes_admin.STATIC), name="static")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ())) or "request"
        message = f"{where}: {first.get('msg', 'invalid')} ({len(errs)} error(s))"
        if first.get("type") == "json_invalid":  # as the routes that parse their own body say
            loc = first.get("loc", ())
            at = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
            reason = (first.get("ctx") or {}).get("error", "not JSON")
            message = f"the body is not valid JSON: {reason}{at}"
        service.metrics.error("InvalidRequestError")
        return JSONResponse(error_body("InvalidRequestError", message), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kinds = {404: "NotFoundError", 405: "MethodNotAllowed", 400: "InvalidRequestError",
                 408: "ServiceTimeoutError", 413: "PayloadTooLargeError"}
        kind = kinds.get(exc.status_code, "ServiceError")
        service.metrics.error(kind)
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        # a body FastAPI could not parse (bad or too deeply nested JSON) is a request of the
        # wrong shape, 422 like every other InvalidRequestError
        status = 422 if exc.status_code == 400 else exc.status_code
        return JSONResponse(error_body(kind, detail), status_code=status,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, service)

    app.add_middleware(BodyLimitMiddleware, max_bytes=service.config.max_upload_bytes,
                       on_reject=lambda: service.metrics.error("PayloadTooLargeError"),
                       body_timeout=service.config.body_timeout)
    app.add_middleware(ObserveMiddleware, service=service)
    return app


class ObserveMiddleware:
    """ASGI middleware: security headers, metrics by route template, and one access-log line.

    The log line holds method, route template, status and time: never headers or query
    strings, so neither tokens nor user data reach the log.
    """

    def __init__(self, app: Any, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
            return message

        async def observing_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"),
                            (b"content-security-policy", CSP.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, counting_receive, observing_send)
        finally:
            seconds = time.perf_counter() - t0
            route = _route_label(scope)
            self.service.metrics.observe(route, scope.get("method", ""), status, seconds, received)
            access_log.info("%s %s %d %.1fms", scope.get("method", ""), route, status,
                            seconds * 1000)


def _route_label(scope: dict) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return str(path)
    if str(scope.get("path", "")).startswith("/static/"):
        return "/static"
    return "unmatched"

__all__ = ["create_app", "ServeConfig"]
