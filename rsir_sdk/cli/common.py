"""What the ``rsir`` subcommands share: argument groups, argument types, exit codes, printing.

The command line is a thin layer: it parses, calls the public API (:class:`rsir_sdk.Retriever`
and friends) and prints. Every :class:`~rsir_sdk.errors.RsirError` and every bad argument ends
as one line on stderr and a documented exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
from typing import Any, Iterator

from ..errors import RsirError
from ..rasters import RasterRule
from ..store import MAX_TOPK

DEFAULT_URI = "./rsir.db"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


class UsageError(RsirError):
    """Arguments that do not fit together (exit status 2)."""


# --------------------------------------------------------------------------- argument types


def int_in(low: int, high: int | None = None, what: str = "value"):
    """An argparse type: an integer in ``low..high``; anything else is a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{what} must be {bound}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


K_TYPE = int_in(1, MAX_TOPK, "k")
RADIUS_TYPE = int_in(0, None, "radius")
POSITIVE = int_in(1, None, "a positive integer")


def seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


SECONDS_TYPE = seconds


def collection_name(text: str) -> str:
    """``--collection``: a name, never empty (an empty one would silently mean the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "must not be empty (leave --collection out for the bundle's default name)")
    return text


def json_object(text: str | None, name: str) -> dict[str, Any] | None:
    """Parse a JSON object given on the command line (``None`` for nothing)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        example = {"--filter": '{"label": "Forest"}',
                   "--search-params": '{"nprobe": 16}'}.get(name, '{"nlist": 1024}')
        raise UsageError(f"{name} must be a JSON object, e.g. '{example}': {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{name} must be a JSON object, got {text!r}")
    return value


def filter_arg(text: str | None) -> str | dict[str, Any] | None:
    """``--filter``: a JSON object (``{"label": "forest"}``, the safe form) or an expression."""
    if text is None:
        return None
    if text.lstrip().startswith("{"):
        return json_object(text, "--filter")
    return text


# --------------------------------------------------------------------------- argument groups


def add_store_args(p: argparse.ArgumentParser, *, collection: bool = True) -> None:
    """``--uri``, ``--token`` and (optionally) ``--collection``."""
    p.add_argument("--uri", default=DEFAULT_URI,
                   help="Milvus Lite file (./x.db) or server URL (http://host:19530); default %(default)s")
    p.add_argument("--token", default=os.environ.get("MILVUS_TOKEN"),
                   help="Milvus token (user:password) for servers; default $MILVUS_TOKEN")
    if collection:
        p.add_argument("--collection", default=None, type=collection_name,
                       help="collection name (default: <method>_<bits>_<encoder_id>)")


def add_raster_args(p: argparse.ArgumentParser) -> None:
    """``--bands``, ``--stretch``, ``--nodata``: the raster rule (TIFF/GeoTIFF)."""
    g = p.add_argument_group(
        "rasters (TIFF/GeoTIFF; see docs/ingest.md)",
        "without these, a collection's recorded rule applies (its first index set it); the "
        "defaults below are those of a new collection")
    g.add_argument("--bands", default=None,
                   help="bands to show as RGB, counted from 1 (e.g. 3,2,1; one band = grey); "
                        "default 1,2,3 (1 for 1- and 2-band rasters)")
    g.add_argument("--stretch", default=None,
                   help="range (default: 16-bit scaled from 0..65535, floats from 0..1), "
                        "percentile[:LOW,HIGH] (default 2,98 per band) or fixed:LOW,HIGH")
    g.add_argument("--nodata", type=float, default=None,
                   help="no-data value (default: the file's GDAL_NODATA tag); such pixels become 0")


def raster_rule(args: argparse.Namespace) -> RasterRule | None:
    """The rule the arguments ask for, or ``None`` when they ask for nothing (a collection's
    recorded rule is then used)."""
    parts = []
    if args.bands:
        parts.append(f"bands={args.bands}")
    if args.stretch:
        parts.append(f"stretch={args.stretch}")
    if args.nodata is not None:
        parts.append(f"nodata={args.nodata}")
    return RasterRule.parse(";".join(parts)) if parts else None


# --------------------------------------------------------------------------- output


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON (non-ASCII kept as it is)."""
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def terminal_text(text: str) -> str:
    """``text`` safe to print on one line: control and invisible characters (an escape
    sequence or a line break in a file name, a tab, a zero-width space) shown as escapes.
    Why: a file named ``evil\\x1b[2J.jpg`` cleared the screen from a warning, and a link
    loop's name split its warning over two lines."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class TerminalFormatter(logging.Formatter):
    """The CLI's log lines, each message through :func:`terminal_text` (names in messages
    come from archives: any characters a file system allows); a traceback (``-v``) stays as
    it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return terminal_text(super().formatMessage(record))


def warn(message: str) -> None:
    """One line on stderr (control characters escaped: :func:`terminal_text`; leading line
    breaks, which end a progress bar's line, kept)."""
    body = message.lstrip("\n")
    print(message[: len(message) - len(body)] + terminal_text(body), file=sys.stderr)


class ProgressBar:
    """A tqdm bar on stderr fed with ``(done, total, postfix)``; when stderr is not a terminal
    (a log file, ``docker logs``), a line of its own every 30 s and at the end (tqdm's ``\r``
    redraws garbled the log into one long line).

    The bar appears with the first update: work that fails before it starts (a missing
    collection, a server that does not answer) prints its one error line and no empty bar."""

    def __init__(self, desc: str, unit: str = "img"):
        self._desc, self._unit = desc, unit
        self._bar: Any = None

    def update(self, done: int, total: int | None, **postfix: Any) -> None:
        if self._bar is None and total == 0:  # nothing to do (an empty archive): no "0img" bar
            return
        if self._bar is None:
            from tqdm import tqdm

            tty = sys.stderr.isatty()
            self._bar = tqdm(total=total, desc=self._desc, unit=self._unit, dynamic_ncols=tty,
                             file=sys.stderr if tty else LogLines(sys.stderr),
                             mininterval=0.5 if tty else 30.0, smoothing=0.1)
        if self._bar.total != total:
            self._bar.total = total
        if postfix:
            self._bar.set_postfix(refresh=False, **postfix)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class LogLines:
    """A stream for tqdm writing to a log: each redraw (``\r`` + the bar) becomes a line."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        for part in text.split("\r"):
            part = part.strip("\n")
            if part.strip():
                self._stream.write(part + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """While a command runs: SIGTERM (``docker stop``, systemd) ends it as Ctrl-C does (what
    was done is kept and said, exit status 130; it ended the run without a word), unless the
    host program handles SIGTERM itself. The handlers found are put back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    if saved[signal.SIGTERM] == signal.SIG_DFL:
        # Python's own Ctrl-C handler: it raises KeyboardInterrupt, and the store holds it back
        # while a request is in flight as it does Ctrl-C (store.rpc.interrupts_held)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def ignore_more_interrupts() -> None:
    """Once an interruption is being reported: a second Ctrl-C (or SIGTERM) must not cut the
    report short with a traceback (a progress bar's clean-up printed one). The handlers come
    back when the command returns (:func:`stop_signals`)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
