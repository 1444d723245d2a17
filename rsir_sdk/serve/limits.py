"""Bounded work and bounded bodies: the two limits that keep one service process healthy.

- :class:`WorkGate` runs the blocking retriever calls (onnxruntime, pymilvus) in a small thread
  pool. At most ``concurrency`` run at once and at most ``max_queue`` wait; one more is refused
  at once with :class:`~rsir_sdk.serve.errors.ServiceBusyError` (HTTP 503 + ``Retry-After``)
  rather than queueing without bound. A call that runs past ``timeout`` is answered with
  :class:`~rsir_sdk.serve.errors.ServiceTimeoutError` (504); its thread cannot be killed, so its
  slot stays taken until it really ends, and the concurrency bound stays true.
- :class:`BodyLimitMiddleware` answers 413 for a body declared (``Content-Length``) or found
  (streamed, counted) to be over the upload limit, before any of it is parsed.
- :func:`guarded_h11` gives each connection a deadline for its request headers and caps the
  connections waiting for theirs (slow-header clients cannot hold sockets forever);
  :class:`RepeatFilter` keeps an overload from writing one WARNING line per refused request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from starlette.exceptions import HTTPException

from .errors import ServiceBusyError, ServiceTimeoutError, error_body

log = logging.getLogger(__name__)
T = TypeVar("T")


class WorkGate:
    """A thread pool with an admission limit (running + waiting) and a per-call time limit."""

    def __init__(self, concurrency: int = 2, max_queue: int = 64, timeout: float = 30.0,
                 retry_after: float = 1.0):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.concurrency = int(concurrency)
        self.max_queue = int(max_queue)
        self.timeout = float(timeout)
        self.retry_after = float(retry_after)
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="rsir-work")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._idle = threading.Event()
        self._idle.set()
        self._abandoned = threading.Event()
        self.rejected = 0
        self.timed_out = 0
        limit_log_repeats()  # refused requests under overload: one log line per kind and 10 s

    @property
    def running(self) -> int:
        """Calls executing in a worker thread now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Calls admitted but not started yet."""
        return max(0, self._admitted - self._running)

    def _admit(self) -> None:
        with self._lock:
            if self._admitted >= self.concurrency + self.max_queue:
                self.rejected += 1
                raise ServiceBusyError(
                    f"the service is busy ({self.concurrency} running, {self.max_queue} waiting): "
                    f"retry after {self.retry_after:g} s",
                    retry_after=self.retry_after)
            self._admitted += 1
            self._idle.clear()

    def _release(self, _fut: Future) -> None:
        with self._lock:
            self._admitted -= 1
            if self._admitted == 0:
                self._idle.set()

    def _wrap(self, fn: Callable[..., T], args: tuple) -> Callable[[], T]:
        def run() -> T:
            with self._lock:
                self._running += 1
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._running -= 1
        return run

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None,
                  writes: bool = False) -> T:
        """Run ``fn(*args)`` in a worker thread; 503 when full, 504 past the time limit (whose
        answer says a write may still be applied when ``writes``)."""
        self._admit()
        try:
            fut = self._pool.submit(self._wrap(fn, args))
        except RuntimeError:  # pool shut down
            self._release(Future())
            raise ServiceBusyError("the service is shutting down", retry_after=self.retry_after)
        fut.add_done_callback(self._release)
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), limit)
        except asyncio.CancelledError:  # a forced exit (second Ctrl-C) cancels the requests:
            # answer them in JSON, as every error, not with uvicorn's traceback and plain 500
            fut.cancel()  # one not started yet never runs
            raise ServiceBusyError("the service is shutting down (forced)",
                                   retry_after=self.retry_after) from None
        except asyncio.TimeoutError:
            self.timed_out += 1
            if fut.cancel():  # still waiting for a worker: dropped, it never runs
                raise ServiceTimeoutError(
                    f"the request waited longer than the service's {limit:g} s limit for a "
                    f"worker and was not run", 504, "ServiceTimeoutError") from None
            # a call running in a thread cannot be stopped: it goes on to its end (a 504'd
            # write was applied later without a word); the answer says so
            after = (" (a write or delete may still be applied: writes are upserts and deletes "
                     "by id, so sending it again is safe)" if writes else
                     "; a smaller request answers sooner")
            raise ServiceTimeoutError(
                f"the request took longer than the service's {limit:g} s limit; it runs on to "
                f"its end in the service{after}", 504, "ServiceTimeoutError") from None

    def drain(self, timeout: float) -> bool:
        """Wait until every admitted call has ended (True), or ``timeout`` passes or the work
        is abandoned (False)."""
        deadline = time.monotonic() + timeout
        while not self._idle.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if self._abandoned.is_set() or time.monotonic() >= deadline:
                return False
        return True

    def abandon(self) -> None:
        """Stop waiting for the calls in flight (a forced exit): :meth:`drain` returns now."""
        self._abandoned.set()

    def close(self, timeout: float = 30.0) -> bool:
        """Refuse new work, wait for running calls, stop the threads; True if all ended."""
        done = self.drain(timeout)
        self._pool.shutdown(wait=done, cancel_futures=True)
        LOG_LIMIT.flush()
        return done


class BodyLimitMiddleware:
    """ASGI middleware: 413 for request bodies over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: Any, max_bytes: int, on_reject: Callable[[], None] | None = None,
                 body_timeout: float | None = None):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.on_reject = on_reject
        #: seconds a request's whole body may take to arrive (408 after); None: no limit
        self.body_timeout = body_timeout

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(scope, receive, send, declared)
            return
        seen = 0
        limit = self.max_bytes
        deadline = (None if self.body_timeout is None
                    else asyncio.get_running_loop().time() + self.body_timeout)
        started = body_done = False

        async def limited_receive() -> dict:
            nonlocal seen, body_done
            if body_done or started:  # later waits are for a disconnect: no deadline
                return dict(await receive())
            message = await self._receive_by(receive, deadline)
            if message.get("type") == "http.request":
                body_done = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > limit:
                    # an HTTPException: FastAPI passes it through its own body parsing unchanged
                    raise HTTPException(413, _too_large(limit, None),
                                        headers={"Connection": "close"})
            return message

        async def watched_send(message: dict) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except asyncio.CancelledError:
            # the server cancels what is still running when its graceful shutdown times out (a
            # body still arriving): answer in JSON, as every error, not with a plain-text 500
            # and a traceback in the log
            if not started:
                await _send_json(send, 503, error_body(
                    "ServiceBusyError", "the service is shutting down"), [(b"retry-after", b"1")])

    async def _receive_by(self, receive: Callable, deadline: float | None) -> dict:
        """The next ASGI message, or 408 once the body has taken ``body_timeout`` seconds: a
        client that sent its headers and then dripped its body (or stopped) held a connection
        and its bytes for as long as it liked."""
        if deadline is None:
            return dict(await receive())
        left = deadline - asyncio.get_running_loop().time()
        try:
            return dict(await asyncio.wait_for(receive(), max(left, 0.001)))
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the request body did not arrive within the service's "
                                     f"{self.body_timeout:g} s (rsir serve --body-timeout)",
                                headers={"Connection": "close"}) from None

    async def _reject(self, scope: dict, receive: Callable, send: Callable, size: int) -> None:
        if self.on_reject:
            self.on_reject()
        await _send_json(send, 413, error_body("PayloadTooLargeError",
                                               _too_large(self.max_bytes, size)))


async def _send_json(send: Callable, status: int, body: Any,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """One JSON answer through ASGI ``send`` (the connection closed after it)."""
    # the form of the app's own JSON answers (Starlette's JSONResponse): compact, UTF-8
    data = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                            (b"content-length", str(len(data)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


def _too_large(limit: int, size: int | None) -> str:
    got = f" ({size} bytes)" if size is not None else ""
    return (f"the request body{got} is over the service's {limit}-byte upload limit: send a "
            f"smaller image, fewer images per request, or codes instead")


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RepeatFilter(logging.Filter):
    """Let one WARNING-or-worse line of each kind through per ``interval`` seconds.

    Under overload every refused request used to log a WARNING (7,765 lines in 23 s): the log
    grew as fast as the attack. Here the first line of a kind (same logger, message and first
    argument, e.g. ``ServiceBusyError``) in each interval is logged; later ones are counted, and
    the next line that passes, or :meth:`flush` at shutdown, says how many were left out.
    Lines below WARNING (the access log) are not touched.
    """

    def __init__(self, interval: float = 10.0):
        super().__init__()
        self.interval = float(interval)
        self._lock = threading.Lock()
        self._seen: dict[tuple, list] = {}  # key -> [interval start, lines left out, example]

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a repeat inside the interval; the first line after one counts the rest."""
        if record.levelno < logging.WARNING or getattr(record, "rsir_summary", False):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        key = (record.name, str(record.msg), str(args[0]) if args else None)
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                return False
            self._seen[key] = [now, 0, record.getMessage()[:120]]
            if len(self._seen) > 1000:  # kinds are few; keep the table small anyway
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
        if entry is not None and entry[1]:
            record.msg = f"{record.msg} (%d more like this in the last %.0f s, not logged)"
            record.args = (*args, entry[1], now - entry[0])
        return True

    def flush(self) -> None:
        """Log one summary line for each kind that has lines left out (called at shutdown)."""
        with self._lock:
            pending = [(k[0], v[1], v[2]) for k, v in self._seen.items() if v[1]]
            for v in self._seen.values():
                v[1] = 0
        for name, n, example in pending:
            logging.getLogger(name).warning(
                "%d more lines like %r were not logged (at most one a kind per %.0f s)", n,
                example, self.interval, extra={"rsir_summary": True})


#: the service's log limiter: on its loggers and uvicorn's (see :func:`limit_log_repeats`)
LOG_LIMIT = RepeatFilter()
LIMITED_LOGGERS = ("rsir_sdk.serve", "rsir_sdk.serve.limits", "uvicorn.error")


def limit_log_repeats() -> None:
    """Put :data:`LOG_LIMIT` on the service's loggers (idempotent)."""
    for name in LIMITED_LOGGERS:
        logging.getLogger(name).addFilter(LOG_LIMIT)


def guarded_h11(header_timeout: float, max_incomplete: int) -> type:
    """uvicorn's h11 protocol class, plus a deadline on request headers and a cap on the
    connections still waiting for theirs.

    uvicorn arms no timer before a request's headers are complete, so a client that opens a
    connection and sends a header byte now and then (slowloris) held a socket forever, and
    any number of them could be opened. Here every connection waiting for headers (a new one,
    or a kept-alive one between requests) is closed ``header_timeout`` seconds after it started
    waiting, and when more than ``max_incomplete`` are waiting the oldest is closed at once.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    waiting: dict[Any, None] = {}  # insertion order: the oldest first

    class GuardedH11Protocol(H11Protocol):
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_done()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's headers arrived
                self._headers_done()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._await_headers()  # before super(): it may start a pipelined request
            super().on_response_complete()

        def _await_headers(self) -> None:
            self._headers_done()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late, False)
            waiting[self] = None
            while len(waiting) > max_incomplete:
                next(iter(waiting))._headers_late(True)

        def _headers_done(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            waiting.pop(self, None)

        def _headers_late(self, evicted: bool) -> None:
            self._headers_done()
            if evicted:
                log.warning("closed a connection waiting for request headers: more than %d "
                            "connections were waiting (--max-incomplete-connections)",
                            max_incomplete)
            else:
                log.warning("closed a connection that sent no complete request headers in "
                            "%g s (--header-timeout)", header_timeout)
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol
