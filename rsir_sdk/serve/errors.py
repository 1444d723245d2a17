"""The service's error kinds: one table shared by the server (exception -> JSON) and the client.

Every error answer is ``{"error": KIND, "message": ONE_LINE}`` where ``KIND`` is the name of the
Python exception class the in-process API raises for the same mistake (``ImageLoadError``,
``CodeLengthError``, ``CollectionMismatchError``...), so :class:`~rsir_sdk.serve.client.RemoteRetriever`
can raise that very class again on the other side. Kinds the Python API has no class for (auth,
limits, saturation) get small classes here, all subclasses of :class:`~rsir_sdk.errors.RsirError`.

Why a table: the status code and the class travel together, and a kind unknown to an older client
still maps to :class:`ServiceError` instead of a bare ``httpx`` error.
"""

from __future__ import annotations

import re
from typing import Any

from .. import errors as core_errors
from ..errors import RsirError

#: longest message put on the wire (one line; the server log keeps the rest)
MAX_MESSAGE = 500


class ServiceError(RsirError):
    """An error answer from ``rsir serve`` that has no more specific class.

    ``status`` is the HTTP status, ``kind`` the ``error`` field of the JSON body.
    """

    def __init__(self, message: str, status: int = 500, kind: str = "ServiceError"):
        super().__init__(message)
        self.status = status
        self.kind = kind


class AuthenticationError(ServiceError, PermissionError):
    """No bearer token, or one the service does not know (HTTP 401)."""


class ForbiddenError(ServiceError, PermissionError):
    """A valid token without the right: a read token on a write route (HTTP 403)."""


class NotFoundError(ServiceError, LookupError):
    """No such route, item or archive file (HTTP 404)."""


class PayloadTooLargeError(ServiceError, ValueError):
    """The request body is over the service's upload limit (HTTP 413)."""


class InvalidRequestError(ServiceError, ValueError):
    """The request does not have the shape the endpoint documents (HTTP 422)."""


class ServiceBusyError(ServiceError):
    """The service's work queue is full (HTTP 503 with ``Retry-After``); try again later."""

    def __init__(self, message: str, status: int = 503, kind: str = "ServiceBusyError",
                 retry_after: float | None = None):
        super().__init__(message, status, kind)
        self.retry_after = retry_after


class ServiceTimeoutError(ServiceError, TimeoutError):
    """The request ran past the service's time limit (HTTP 504) or the client's timeout."""


class ServiceConnectionError(ServiceError, ConnectionError):
    """The service could not be reached (after the client's retries)."""


#: kind -> HTTP status, for classes of rsir_sdk.errors (looked up along the MRO, so a subclass
#: the core adds later inherits its parent's status); names absent from this core are skipped
CORE_STATUS: dict[str, int] = {
    "ImageLoadError": 422,
    "CodeLengthError": 422,
    "RasterRuleError": 422,
    "InvalidInputError": 422,
    "RasterRuleMismatchError": 409,
    "CollectionMismatchError": 409,
    "CollectionNotFoundError": 404,
    "StoreError": 503,
    "BundleError": 500,
    "RsirError": 500,
}

SERVICE_CLASSES: dict[str, type[ServiceError]] = {
    c.__name__: c
    for c in (ServiceError, AuthenticationError, ForbiddenError, NotFoundError,
              PayloadTooLargeError, InvalidRequestError, ServiceBusyError, ServiceTimeoutError,
              ServiceConnectionError)
}

#: plain Python exceptions the SDK raises for bad arguments (duplicate ids, k out of range...)
BUILTIN_STATUS: dict[str, int] = {"ValueError": 422, "TypeError": 422, "KeyError": 422}


def one_line(text: Any, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, whitespace collapsed, cut at ``limit`` characters."""
    s = re.sub(r"\s+", " ", str(text)).strip()
    return s if len(s) <= limit else s[: limit - 1] + "…"


def classify(exc: BaseException) -> tuple[str, int]:
    """``(kind, status)`` for an exception raised while serving a request.

    Dependency errors (pymilvus, grpc) that escaped the store unwrapped count as ``StoreError``;
    anything unknown is ``InternalError`` (500), whose details stay in the server log.
    """
    if isinstance(exc, ServiceError):
        return exc.kind, exc.status
    if isinstance(exc, RsirError):
        for cls in type(exc).__mro__:
            if cls.__name__ in CORE_STATUS:
                # the class's own name is the kind, its nearest known ancestor gives the status
                return type(exc).__name__, CORE_STATUS[cls.__name__]
    if isinstance(exc, RecursionError) and "JSON" in str(exc):
        # client JSON nested past the parser's limit, parsed somewhere without loads_json
        return "InvalidRequestError", 422
    module = type(exc).__module__.split(".")[0]
    if module in ("pymilvus", "grpc", "milvus_lite"):
        return "StoreError", 503
    for cls in type(exc).__mro__:
        if cls.__name__ in BUILTIN_STATUS and cls.__module__ == "builtins":
            return cls.__name__, BUILTIN_STATUS[cls.__name__]
    return "InternalError", 500


def error_body(kind: str, message: str, exc: BaseException | None = None) -> dict[str, Any]:
    """The JSON body of an error answer; ``ImageLoadError`` also carries its source and reason."""
    body: dict[str, Any] = {"error": kind, "message": one_line(message)}
    if isinstance(exc, core_errors.ImageLoadError):
        body["source"] = one_line(exc.source, 200)
        body["reason"] = one_line(exc.reason)
    if isinstance(exc, ServiceBusyError) and exc.retry_after is not None:
        body["retry_after"] = exc.retry_after
    return body


def exception_for(status: int, body: Any, retry_after: float | None = None) -> Exception:
    """The exception a client raises for an error answer (the inverse of :func:`classify`).

    A kind naming a class of :mod:`rsir_sdk.errors` gives that class, a service kind its class
    here, ``ValueError``/``TypeError``/``KeyError`` the builtin; anything else
    :class:`ServiceError`. The exception carries ``status`` and ``kind`` attributes.
    """
    if not isinstance(body, dict):
        body = {}
    kind = str(body.get("error") or _default_kind(status))
    message = one_line(body.get("message") or f"HTTP {status}")
    exc: Exception
    core = getattr(core_errors, kind, None)
    if kind == "ImageLoadError":
        exc = core_errors.ImageLoadError(str(body.get("source", "<remote>")),
                                         str(body.get("reason", message)))
    elif isinstance(core, type) and issubclass(core, RsirError):
        exc = core(message)
    elif kind in SERVICE_CLASSES:
        cls = SERVICE_CLASSES[kind]
        if cls is ServiceBusyError:
            exc = ServiceBusyError(message, status, kind, retry_after)
        else:
            exc = cls(message, status, kind)
    elif kind in BUILTIN_STATUS:
        exc = {"ValueError": ValueError, "TypeError": TypeError, "KeyError": KeyError}[kind](message)
    else:
        exc = ServiceError(message, status, kind)
    try:
        exc.status = status  # type: ignore[attr-defined]
        exc.kind = kind  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exceptions accept attributes
        pass
    return exc


def _default_kind(status: int) -> str:
    return {401: "AuthenticationError", 403: "ForbiddenError", 404: "NotFoundError",
            413: "PayloadTooLargeError", 422: "InvalidRequestError", 503: "ServiceBusyError",
            504: "ServiceTimeoutError"}.get(status, "ServiceError")
