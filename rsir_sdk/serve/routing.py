"""Plumbing shared by the route modules: the error-catching route class, auth, JSON answers.

:class:`ErrorRoute` turns every exception a handler raises into the service's JSON error
(``{"error": kind, "message": one line}``, status from :mod:`rsir_sdk.serve.errors`), so no
traceback ever reaches a client; unexpected errors are logged with their traceback on the
server only.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from ..redact import redact_text
from .auth import READ, WRITE
from .errors import InvalidRequestError, ServiceBusyError, classify, error_body, one_line
from .service import Service

log = logging.getLogger("rsir_sdk.serve")

def service_of(request: Request) -> Service:
    """The :class:`Service` the app was created with."""
    return request.app.state.service


def error_response(exc: BaseException, service: Service | None = None) -> JSONResponse:
    """The JSON error answer for ``exc`` (and count it in the metrics). A store error while
    the service stops (a forced exit closed the store under a request) is the shutdown's
    ``ServiceBusyError``, not Milvus' "Cannot invoke RPC: Channel closed!"."""
    if (service is not None and getattr(service, "shutting_down", False)
            and classify(exc)[0] == "StoreError"):
        exc = ServiceBusyError("the service is shutting down", retry_after=1.0)
    kind, status = classify(exc)
    if status >= 500 and kind == "InternalError":
        log.error("internal error: %s", one_line(exc), exc_info=exc)
        message = "internal error: the service logged the details"
    else:
        message = redact_text(str(exc))   # a store error may quote the Milvus URI
        level = logging.WARNING if status >= 500 else logging.INFO
        log.log(level, "%s (%d): %s", kind, status, one_line(message, 200))
    headers = {}
    if isinstance(exc, ServiceBusyError) or status == 503:
        headers["Retry-After"] = str(max(1, round(getattr(exc, "retry_after", None) or 1)))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="rsir"'
    if service is not None:
        service.metrics.error(kind)
    return JSONResponse(error_body(kind, message, exc), status_code=status, headers=headers)


class ErrorRoute(APIRoute):
    """An APIRoute whose handler answers the service's JSON error for any exception."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except (HTTPException, RequestValidationError):
                raise
            except Exception as exc:  # every error becomes a JSON answer, never a traceback
                return error_response(exc, service_of(request))

        return handle


def require_read(request: Request) -> None:
    """Dependency: the request may read (401 otherwise), and names each query parameter once."""
    service_of(request).auth.check(request.headers.get("authorization"), READ)
    _each_query_parameter_once(request)


def require_write(request: Request) -> None:
    """Dependency: the request may write (401/403 otherwise), and names each query parameter
    once."""
    service_of(request).auth.check(request.headers.get("authorization"), WRITE)
    _each_query_parameter_once(request)


def _each_query_parameter_once(request: Request) -> None:
    """A parameter given twice (``?k=5&k=7``) is refused (422): the last one silently won,
    while the same key in the query and the body was already refused."""
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key in seen:
            raise InvalidRequestError(one_line(f"query parameter {key!r} given twice: give "
                                               f"each once"), 422, "InvalidRequestError")
        seen.add(key)


def json_answer(content: Any, status: int = 200) -> JSONResponse:
    """A JSON answer (the route's response_model documents its shape)."""
    return JSONResponse(content, status_code=status)


def errors_doc(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry documenting error answers."""
    from .schemas import ErrorOut

    text = {401: "no or unknown bearer token", 403: "a read token on a write route",
            404: "not found", 409: "codes or collection of another encoder",
            413: "body over the upload limit", 422: "invalid request, image or code length",
            503: "busy (Retry-After) or the store is unavailable",
            504: "over the request time limit"}
    return {s: {"model": ErrorOut, "description": text.get(s, "error")} for s in statuses}


def multi_body(json_model: type[BaseModel], *, binary: Iterable[str] = ("image/*", "application/octet-stream"),
               form: dict[str, Any] | None = None, binary_doc: str = "one image file") -> dict:
    """``openapi_extra`` for a route taking JSON, multipart and raw-bytes bodies."""
    content: dict[str, Any] = {"application/json": {"schema": json_model.model_json_schema()}}
    if form is not None:
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": form}}
    for media in binary:
        content[media] = {"schema": {"type": "string", "format": "binary",
                                     "description": binary_doc}}
    return {"requestBody": {"required": True, "content": content}}
