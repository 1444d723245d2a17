"""Bounded work and bounded bodies: the two limits that keep one service process healthy.

- :class:`WorkGate` runs the blocking retriever calls (onnxruntime, pymilvus) in a small thread
  pool. At most ``concurrency`` run at once and at most ``max_queue`` wait; one more is refused
  at once with :class:`~rsir_sdk.serve.errors.ServiceBusyError` (HTTP 503 + ``Retry-After``)
  rather than queueing without bound. A call that runs past ``timeout`` is answered with
  :class:`~rsir_sdk.serve.errors.ServiceTimeoutError` (504); its thread cannot be killed, so its
  slot stays taken until it really ends, and the concurrency bound stays true.
- :class:`BodyLimitMiddleware` answers 413 for a body declared (``Content-Length``) or found
  (streamed, counted) to be over the upload limit, before any of it is parsed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
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
        self.rejected = 0
        self.timed_out = 0

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

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run ``fn(*args)`` in a worker thread; 503 when full, 504 past the time limit."""
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
        except asyncio.TimeoutError:
            self.timed_out += 1
            raise ServiceTimeoutError(
                f"the request took longer than the service's {limit:g} s limit", 504,
                "ServiceTimeoutError") from None

    def drain(self, timeout: float) -> bool:
        """Wait until every admitted call has ended (True) or ``timeout`` passes (False)."""
        return self._idle.wait(timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """Refuse new work, wait for running calls, stop the threads; True if all ended."""
        done = self.drain(timeout)
        self._pool.shutdown(wait=done, cancel_futures=True)
        return done


class BodyLimitMiddleware:
    """ASGI middleware: 413 for request bodies over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: Any, max_bytes: int, on_reject: Callable[[], None] | None = None):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.on_reject = on_reject

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

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # an HTTPException: FastAPI passes it through its own body parsing unchanged
                    raise HTTPException(413, _too_large(limit, None))
            return message

        await self.app(scope, limited_receive, send)

    async def _reject(self, scope: dict, receive: Callable, send: Callable, size: int) -> None:
        if self.on_reject:
            self.on_reject()
        body = json.dumps(error_body("PayloadTooLargeError", _too_large(self.max_bytes, size)))
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body.encode()})


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
