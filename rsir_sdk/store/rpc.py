"""Calling pymilvus: quiet logs, bounded retries, and one-line errors.

pymilvus logs every failed call with a traceback (``[ERROR][_log_rpc_error]``), retries a
failing call 75 times (minutes), and raises its own exception classes (or a raw
``grpc.RpcError``) whose messages carry C++ source positions. None of that may reach a user of
rsir-sdk: :func:`quiet` silences the loggers (set ``RSIR_MILVUS_LOGS=1`` to keep them), the store
passes :data:`RETRIES` to every call, and :func:`store_error` turns any exception of a call into
one line: :class:`~rsir_sdk.errors.InvalidInputError` for a filter expression Milvus cannot
parse, :class:`~rsir_sdk.errors.StoreError` for everything else.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import re
import signal
import threading
from typing import Any, Iterator

from ..errors import CollectionNotFoundError, InvalidInputError, StoreError
from ..redact import redact_text

#: retries of a failing call (pymilvus' default of 75 turns one bad request into minutes)
RETRIES = 3
#: loggers pymilvus configures at import (``logging.config.dictConfig``) and logs errors to
PYMILVUS_LOGGERS = ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer",
                    "pymilvus.decorators", "pymilvus.client")

#: message fragments of Milvus Lite 2.5.1 and the 2.3.5 server refusing an expression
_EXPRESSION_ERRORS = (
    "invalid expr", "cannot parse expression", "predicate is not a boolean", "expr type check",
    "failed to create query plan", "token recognition", "mismatched input", "extraneous input",
    "no viable alternative", "invalid syntax", "cannot be casted", "field not exist",
    "not exist", "invalid identifier", "cannot find field", "unexpected error in rpc handling",
    # the filter parsed but could not be evaluated (``label in [1, 2]``: a type mismatch) or
    # could not be planned (thousands of ``or`` terms): the expression, not the store
    "phyfilterbitsnode", "unsupported expr proto node",
)
#: message fragments that mean a Milvus Lite file is damaged
DAMAGE_MARKERS = ("failed to parse insert data from records", "database disk image is malformed",
                  "file is not a database")
_NOISE = (
    (re.compile(r"<(?:MilvusException|ParamError|DataNotMatchException|[A-Za-z]+Exception): "), ""),
    (re.compile(r"\(code=[-\w.]+, message="), ""),
    (re.compile(r"\[\w+\] Retry (?:run out of \d+ retry times|timeout: [\d.]+s), (?:message=)?"), ""),
    (re.compile(r" at /[^\s:]+(?::\d+)?"), ""),
    (re.compile(r", channel_state=.*$", re.S), ""),
    (re.compile(r"^StatusCode\.\w+, "), ""),
    (re.compile(r"\s*:\s*segcore error"), ""),
    (re.compile(r"Assert \"[^\"]*\"\s*=?>?\s*"), ""),
    (re.compile(r"\s+"), " "),
)
_quiet_done = False


def quiet() -> None:
    """Silence pymilvus' loggers and Milvus Lite's root-logger lines (idempotent).

    Call after importing pymilvus (its import resets its loggers). ``GRPC_VERBOSITY`` is set in
    :mod:`rsir_sdk.store` before grpc can be imported.
    """
    global _quiet_done
    if _quiet_done or os.environ.get("RSIR_MILVUS_LOGS"):
        return
    for name in PYMILVUS_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    # milvus_lite logs "Start milvus-lite failed" etc. on the root logger: drop those records
    # (a logger's filters apply to records logged on it, not to those propagated from others)
    logging.getLogger().addFilter(_NotMilvusLite())
    _quiet_done = True


class _NotMilvusLite(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}milvus_lite{os.sep}" not in (record.pathname or "")


def message(exc: BaseException) -> str:
    """The first useful line of a pymilvus/grpc exception, without source positions."""
    text = None
    details = getattr(exc, "details", None)
    if callable(details):  # grpc.RpcError
        try:
            text = details()
        except Exception:
            text = None
    if text is None:
        text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = str(text)
    for pattern, repl in _NOISE:
        text = pattern.sub(repl, text)
    text = text.strip().rstrip(">)").strip()
    return redact_text(text)[:300] or type(exc).__name__


def is_expression_error(text: str) -> bool:
    """Whether a Milvus message says an expression was not understood."""
    low = text.lower()
    return any(marker in low for marker in _EXPRESSION_ERRORS)


def readable_expression_error(text: str) -> str:
    """Milvus' reason for refusing an expression, or, when it names only its own executor
    ("Operator::GetOutput failed for [Operator:PhyFilterBitsNode, plan node id: 41] :", for
    ``label in [1, 2]``), what usually causes that."""
    if "operator::" in text.lower() or "plan node id" in text.lower():
        return ("Milvus could not evaluate it; compare each field with values of its type "
                "(id, label and path are strings: label in [\"a\", \"b\"])")
    return text


def is_damage(text: str) -> bool:
    """Whether a message means a Milvus Lite file is damaged."""
    low = text.lower()
    return any(marker in low for marker in DAMAGE_MARKERS)


def store_error(exc: BaseException, what: str, expression: str | None = None) -> Exception:
    """One-line error for ``exc`` raised by a pymilvus call doing ``what``.

    With ``expression`` (the caller's own filter string), a parse error becomes
    :class:`~rsir_sdk.errors.InvalidInputError` naming the expression.
    """
    if isinstance(exc, (StoreError, InvalidInputError)):
        return exc
    text = message(exc)
    if expression and is_expression_error(text):
        return InvalidInputError(f"invalid filter expression {expression!r:.200}: "
                                 f"{readable_expression_error(text)}")
    if isinstance(exc, UnicodeError) or "codec can't encode" in text:
        return InvalidInputError(f"{what}: text that is not valid Unicode (a lone surrogate): {text}")
    if "collection not found" in text.lower():  # dropped meanwhile: a 404, not a 503 to retry
        return CollectionNotFoundError(f"{what} failed: the collection does not exist (dropped "
                                       f"since it was opened?): {text}")
    return StoreError(f"{what} failed: {text}")


#: seconds a SIGTERM waits for the Milvus request in flight before it interrupts it
SIGTERM_HOLD = 5.0


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT), and SIGTERM where it interrupts as Ctrl-C does, back until the
    request in flight returns, then raise ``KeyboardInterrupt``.

    Why: a ``KeyboardInterrupt`` raised inside grpc's Python layer in the middle of a request can
    leave the channel's lock taken, and the next request on that channel then waits forever (or
    grpc aborts the process: exit status -6, no word). ``rsir index`` makes exactly such a request
    after an interrupt (it writes what it has encoded before it exits), and hung there in about
    one run in eight on a loaded machine (``tests/test_interrupt.py``, a signal to the process
    alone; the stack showed the upsert waiting on the channel). A second signal while one is held
    raises at once, so a request stuck on an unreachable server can still be left; a SIGTERM is
    held for :data:`SIGTERM_HOLD` seconds at most (a process manager sends one, then SIGKILL:
    ``docker stop`` after 10 s). Only in the
    main thread, and only for a signal whose handler is Python's own ``KeyboardInterrupt`` one
    (SIGINT by default; SIGTERM while an ``rsir`` command runs); elsewhere (worker threads, a
    service with its own handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held_signals = [sig for sig in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(sig) is signal.default_int_handler]
    if not held_signals:
        yield
        return
    held: list[int] = []
    timers: list[threading.Timer] = []

    def hold(signum: int, frame: Any) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)
        if signum == signal.SIGTERM:  # delivered to this handler again: raised then
            timer = threading.Timer(SIGTERM_HOLD, _signal_main_thread, (signum,))
            timer.daemon = True
            timer.start()
            timers.append(timer)

    previous = {sig: signal.signal(sig, hold) for sig in held_signals}
    try:
        yield
    finally:
        for timer in timers:
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            raise KeyboardInterrupt


def _signal_main_thread(signum: int) -> None:
    """Deliver ``signum`` to the main thread again (a real signal, so that a wait there is
    interrupted at once; ``interrupt_main`` only runs the handler when the wait returns)."""
    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident or 0, signum)
    else:  # Windows
        _thread.interrupt_main(signal.Signals(signum))
