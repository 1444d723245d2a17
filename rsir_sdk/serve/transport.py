"""The HTTP transport of :class:`~rsir_sdk.serve.client.RemoteRetriever`: one request, retried.

:class:`HttpOptions` says how the client talks HTTP (timeouts, retries, backoff, an own
``httpx.Client``); :class:`HttpTransport` sends one request with those options and hands back
the decoded JSON answer, or raises the exception class the service's JSON ``error`` kind names
(:func:`rsir_sdk.serve.errors.exception_for`). It knows nothing of retrieval: what to send and
what the answer means stay in :mod:`rsir_sdk.serve.client`, so that the verbs read as verbs and
the retry rules live in one place.

Connection errors, timeouts and 503 answers are retried ``HttpOptions.retries`` times with
exponential backoff (``backoff * 2**attempt``, at most ``max_backoff`` s, with jitter so that
clients that failed together spread out; a 503's ``Retry-After`` is honoured up to
``max_backoff``). Writes are upserts by id, so retrying them is safe. The bytes of request
bodies sent are counted (``bytes_sent``, ``last_request_bytes``): codes vs image uploads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Mapping

import httpx

from ..errors import InvalidInputError, StoreError
from ..redact import redact_uri
from .errors import ServiceConnectionError, ServiceError, ServiceTimeoutError, exception_for

# the name it had before the transport got its own module: logging set up for it still applies
log = logging.getLogger("rsir_sdk.serve.client")

RETRY_STATUS = 503

__all__ = ["HttpOptions", "HttpTransport", "RETRY_STATUS"]


@dataclass(frozen=True)
class HttpOptions:
    """How :class:`RemoteRetriever` talks HTTP, as one value.

    ``timeout``: seconds each wait for a byte may take, and the reading of an answer's whole
    body after its headers (a service that sends a byte now and then is cut off too; an upload
    is not counted; each retry has its own). ``retries``: extra attempts after a connection error,
    timeout or 503. ``backoff``/``max_backoff``: the first retry's delay and the longest one, in
    seconds. ``index_timeout``: seconds an ``index``/``prepare_for_search`` request may take.
    ``client``: an ``httpx.Client`` to use instead of a new one (its own timeout applies).
    """

    timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.2
    max_backoff: float = 5.0
    index_timeout: float = 3600.0
    client: httpx.Client | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("timeout", "backoff", "max_backoff", "index_timeout"):
            value = getattr(self, name)
            positive = name in ("timeout", "index_timeout")
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0 or (positive and value == 0)):
                bound = "> 0" if positive else ">= 0"
                raise InvalidInputError(f"{name} must be a finite number of seconds {bound}, "
                                        f"got {value!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise InvalidInputError(f"retries must be an integer >= 0, got {self.retries!r}")


class HttpTransport:
    """Requests to one service: its base ``url`` (no trailing ``/``), its bearer ``token``
    (sent with every request when given) and the :class:`HttpOptions`.

    The ``httpx.Client`` is ``options.client`` when given (left open by :meth:`close`), else a
    new one this transport owns and closes.
    """

    def __init__(self, url: str, token: str | None, options: HttpOptions):
        self.url = url
        self.shown_url = redact_uri(url)  # in messages and logs: credentials masked
        self.options = options
        self.own_client = options.client is None
        self.client = options.client or httpx.Client(timeout=options.timeout)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        #: bytes of request bodies sent, total and by the last request (codes vs uploads)
        self.bytes_sent = 0
        self.last_request_bytes = 0
        self.closed = False

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                content: bytes | None = None, json_body: Any = None, files: Any = None,
                data: Any = None, headers: Mapping[str, str] | None = None,
                timeout: float | None = None, resend: bool = True) -> Any:
        """Send one request with retries; the decoded JSON answer, or the mapped exception.

        ``resend=False``: a request that may have reached the service (a timeout or a broken
        connection after it was sent, a 503 of the store) is not sent again, only one that never
        left whole (connection refused, connect timeout, a failed upload) or was refused
        unstarted (a 503 ``ServiceBusyError``): for answers a second run would change, as a
        delete's count (the first attempt's deletes made it 0)."""
        if self.closed:  # httpx's own RuntimeError is no rsir error and names no remedy
            raise StoreError(f"this RemoteRetriever of {self.shown_url} is closed (close() was "
                             f"called, or a with-block ended): open a new one")
        hdrs = {**self.headers, **(headers or {})}
        if json_body is not None:
            content = json.dumps(json_body, ensure_ascii=False).encode()
            hdrs["Content-Type"] = "application/json"
        request = self.client.build_request(
            method, self.url + path, params=params, content=content, files=files, data=data,
            headers=hdrs, timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout)
        body = request.read() if files is not None else (content or b"")
        limit = timeout if timeout is not None else (
            self.options.timeout if self.own_client else None)
        attempt = 0
        while True:
            try:
                response = self._send(request, limit)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if not resend and not isinstance(exc, NOT_SENT):
                    raise self._maybe_applied(exc) from None
                if attempt >= self.options.retries:
                    raise self._transport_error(exc, _reads_only(method, path)) from None
                self._sleep(attempt, None, f"{exc.__class__.__name__}")
                attempt += 1
                continue
            self.last_request_bytes = len(body)
            self.bytes_sent += len(body)
            if (response.status_code == RETRY_STATUS and attempt < self.options.retries
                    and (resend or _refused_unstarted(response))):
                self._sleep(attempt, _retry_after(response), "503")
                attempt += 1
                continue
            return self._decode(response)

    def _send(self, request: httpx.Request, limit: float | None) -> httpx.Response:
        """Send, then read the answer's body within ``limit`` seconds of its headers (httpx's
        timeouts bound each wait for a byte, not the body: a service that sent a byte every
        half second held a 2-second call for 74 s); past it, a ``ReadTimeout`` (retried as a
        timeout). The upload and the service's work are bounded by httpx's own timeouts, as
        before; a body that is complete is never thrown away for arriving late."""
        response = self.client.send(request, stream=True)
        deadline = None if limit is None else time.monotonic() + limit
        length = response.headers.get("content-length")
        expected = int(length) if length and length.isdigit() else None
        parts: list[bytes] = []
        got = 0
        try:
            for part in response.iter_raw():
                parts.append(part)
                got += len(part)
                if expected is not None and got >= expected:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"no whole answer in {limit} s", request=request)
        finally:
            response.close()
        return httpx.Response(response.status_code, headers=response.headers,
                              content=b"".join(parts), request=request)

    def answers_ok(self, path: str) -> bool:
        """Whether ``GET path`` answers 200: one attempt, no retries, no token; ``False`` when
        the service cannot be reached (or this transport is closed)."""
        if self.closed:
            return False
        try:
            response = self.client.get(self.url + path)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def close(self) -> None:
        """Close the ``httpx.Client`` if this transport made it; later requests are refused."""
        self.closed = True
        if self.own_client:
            self.client.close()

    def _maybe_applied(self, exc: Exception) -> Exception:
        """The error of a request not sent again that may have reached the service."""
        return ServiceTimeoutError(
            f"no answer from {self.shown_url} ({exc.__class__.__name__}) to a request that may have "
            f"been applied: not sent again, since its answer would not count what the first "
            f"did (sending it again yourself is safe)", 504, "ServiceTimeoutError")

    def _transport_error(self, exc: Exception, reads_only: bool) -> Exception:
        n = self.options.retries + 1
        if isinstance(exc, httpx.TimeoutException):
            after = ("" if reads_only else "; a write may have been applied meanwhile (writes "
                     "are upserts: sending it again is safe)")
            return ServiceTimeoutError(f"no answer from {self.shown_url} in time after {n} attempts "
                                       f"({exc.__class__.__name__}){after}", 504,
                                       "ServiceTimeoutError")
        return ServiceConnectionError(f"cannot reach {self.shown_url} after {n} attempts "
                                      f"({exc.__class__.__name__})", 0, "ServiceConnectionError")

    def _sleep(self, attempt: int, retry_after: float | None, why: str) -> None:
        delay = min(self.options.max_backoff, self.options.backoff * (2 ** attempt))
        delay *= 0.5 + random.random() / 2  # jitter: clients that failed together spread out
        if retry_after is not None:
            delay = min(self.options.max_backoff, max(delay, retry_after))
        log.info("retrying %s in %.2f s (%s)", self.shown_url, delay, why)
        time.sleep(delay)

    def _decode(self, response: httpx.Response) -> Any:
        """The answer's JSON, or the exception its ``error`` names. An answer that is not an rsir
        service's (a web server or proxy at that URL: HTML, no ``error`` field) is said to be so,
        naming the URL, not passed on as a bare "HTTP 404" or a ``None`` payload."""
        try:
            payload = response.json()
        except ValueError:
            payload = None
        status = response.status_code
        rsir_error = isinstance(payload, dict) and "error" in payload
        url = redact_uri(str(response.request.url))  # user:password of the URL masked
        if status in (404, 405) and not rsir_error:
            payload = {"message": f"HTTP {status} from {url} is not an rsir service's answer: "
                                  f"is {self.shown_url} the base URL of rsir serve?"}
        elif status >= 400 and not rsir_error and status not in (RETRY_STATUS, 504):
            payload = {"message": f"HTTP {status} from {url}, not from rsir serve itself (a "
                                  f"proxy or web server in front of it?)"}
        elif 300 <= status < 400:
            raise ServiceError(f"{url} redirects to "
                               f"{redact_uri(response.headers.get('location', '?'))}: "
                               f"give RemoteRetriever that URL", status, "ServiceError")
        elif status < 400 and not isinstance(payload, dict):
            raise ServiceError(f"the answer from {url} is not an rsir "
                               f"service's (no JSON object): is {self.shown_url} the base URL of rsir "
                               f"serve?", status, "ServiceError")
        if status >= 400:
            raise exception_for(status, payload, _retry_after(response))
        return payload


#: transport errors of a request that never reached the service whole: safe to send again
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError,
            httpx.WriteTimeout, httpx.UnsupportedProtocol)


def _refused_unstarted(response: httpx.Response) -> bool:
    """Whether a 503 is the queue's or the shutdown's refusal (``ServiceBusyError``: the work
    never started), not a store error that may have come after the work was done."""
    try:
        return bool(response.json().get("error") == "ServiceBusyError")
    except ValueError:
        return False


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _reads_only(method: str, path: str) -> bool:
    """Whether a request only reads: a GET, or a search, count or duplicates sent by POST (a
    timed-out one was said to have maybe applied a write)."""
    return method == "GET" or (method == "POST" and path.startswith(
        ("/v1/search", "/v1/count", "/v1/duplicates", "/v1/items/get")))
