"""One connection to Milvus: opening it (Lite or server), calling it, closing it.

:class:`Connection` is the only place that calls ``MilvusClient`` methods. Each call gets
bounded retries (:data:`~.rpc.RETRIES`), an optional deadline, and for a server a read
consistency; every exception becomes one line (:func:`~.rpc.store_error`). For Milvus Lite it
also checks the file before the first open, notices a server that died on a request, and stops
the server on close (:mod:`.lite`). Column writes and bulk-insert calls go through pymilvus'
ORM, in :class:`.orm.OrmWrites`, a part of :class:`Connection` kept in its own module.

**Read consistency on a server.** A collection's default, Strong, makes every read wait for a
time tick (about 0.2 s per read measured on the 2.3.5 server, against 4 ms with Session). So the
first read of a connection, and the first after a delete, is Strong (it sees everything written
before, by any process; the 2.3.5 server answers a delete with timestamp 0, which Session
cannot wait for), and later reads are Session: they see this process's own upserts at once
(pymilvus keeps the last write's timestamp per collection) and other writers' within moments. ``read_consistency``
forces one level for every read.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import InvalidInputError, StoreError
from ..redact import redact_text, redact_uri
from . import lite, lite_clock, rpc
from .orm import OrmWrites
from .schema import is_lite_uri

log = logging.getLogger(__name__)

_LITE_NAME = re.compile(r"^[a-zA-Z0-9.\-_]+$")
_LEVELS = ("Strong", "Session", "Bounded", "Eventually")
#: seconds a Milvus Lite open waits for its freshly spawned server to answer
LITE_START_WAIT = 20.0
_MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class ConnectOptions:
    """How a store connects (one value, not four keywords): ``client_kwargs`` (more
    ``MilvusClient`` arguments: TLS files, user/password, ...), ``lite_wait`` (seconds to wait
    for the Milvus Lite server of a killed earlier run to let go of the file), ``lite_start``
    (seconds a Milvus Lite open waits for its freshly spawned server to listen), ``timeout``
    (seconds per Milvus call; ``None``: no deadline), ``read_consistency`` (one level for every
    read on a server: Strong, Session, Bounded or Eventually; ``None``: see the module).

    >>> ConnectOptions(timeout=5.0).lite_wait
    30.0
    """

    client_kwargs: Mapping[str, Any] | None = None
    lite_wait: float = 30.0
    lite_start: float = LITE_START_WAIT
    timeout: float | None = None
    read_consistency: str | None = None

    def __post_init__(self) -> None:
        if self.read_consistency is not None and self.read_consistency not in _LEVELS:
            raise InvalidInputError(f"read_consistency must be one of {', '.join(_LEVELS)}, got "
                                    f"{self.read_consistency!r}")
        for name in ("timeout", "lite_wait", "lite_start"):
            value = getattr(self, name)
            if value is None and name == "timeout":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise InvalidInputError(f"{name} must be a positive number of seconds, got "
                                        f"{value!r}")


class Connection(OrmWrites):
    """A ``MilvusClient`` for ``uri``, with rsir-sdk's call discipline.

    A Milvus Lite file that does not exist yet is not opened here (that would create it and
    start a server): the client opens on first use (:attr:`client`), which only a write makes,
    so a failing read or command leaves no empty ``.db`` behind (:attr:`deferred`).
    """

    def __init__(self, uri: str, token: str | None, options: ConnectOptions | None = None):
        opts = options if options is not None else ConnectOptions()
        self.uri = str(uri)
        if self.uri.startswith("~") and is_lite_uri(self.uri):  # as a shell would (a quoted
            self.uri = os.path.expanduser(self.uri)               # --uri "~/x.db" made ./~)
        self.display_uri = redact_uri(self.uri)
        self.is_lite = is_lite_uri(self.uri)
        self.timeout = opts.timeout
        self.lite_start = float(opts.lite_start)
        self.read_consistency = opts.read_consistency
        self._first_read = True
        self._token = token
        self._orm_alias: str | None = None
        self._orm_collections: dict[str, Any] = {}
        self._lite_file: str | None = None
        self._release_on_drop: weakref.finalize | None = None
        self.first_on_file = False
        self._clock_key = lite.server_key(self.uri) if self.is_lite else ""
        self._broken: str | None = None
        # the log's size when this store's server started or last crashed (set by _open): a
        # crash message reads only what was written since
        self._log_mark = 0
        self._client: Any = None
        self._closed = False
        self._open_lock = threading.Lock()
        self._pending: tuple[str | None, dict[str, Any], float] | None = (
            token, dict(opts.client_kwargs or {}), opts.lite_wait)
        self._reopen_with = self._pending  # a Milvus Lite server that crashed is started again
        if self.is_lite:
            self._check_lite_path()
            if not os.path.exists(self.uri):
                return  # opened by the first write (see the class)
        self._open_now()

    @property
    def deferred(self) -> bool:
        """True while a Milvus Lite file that did not exist has not been opened (no write yet)."""
        return self._pending is not None and not self._closed

    @property
    def lite_missing(self) -> bool:
        """True for a Milvus Lite uri whose file does not exist (nothing was ever written)."""
        return self.is_lite and self.deferred and not os.path.exists(self.uri)

    @property
    def client(self) -> Any:
        """The ``MilvusClient`` (opened now when it was deferred; ``None`` once closed)."""
        if self._client is None and self.deferred:
            # two threads' first writes open one client; a Ctrl-C while the Milvus Lite server
            # starts is held until it has (it closed the connection half-open, and the write
            # Ctrl-C makes of what was encoded then failed: "the connection is closed")
            with self._open_lock, rpc.interrupts_held():
                if self._client is None and self.deferred:
                    self._open_now()
        return self._client

    def _open_now(self) -> None:
        # the pending arguments are cleared only once the client exists: other threads that
        # ask for the client meanwhile wait on the open lock (they read "the connection is
        # closed" when it was cleared first: 7 of 8 threads' first writes failed)
        pending = self._pending
        assert pending is not None
        self._client = self._open(*pending)
        self._pending = None

    # ----------------------------------------------------------------- open / close
    def _open(self, token: str | None, kwargs: dict[str, Any], lite_wait: float) -> Any:
        if self.is_lite:
            self._log_mark = lite.log_size()  # a crash of this server reads what it wrote
            # the file's lock first: only its holder may wait for an earlier run's server or
            # touch Milvus Lite's own lock file (another opener probing that lock made a
            # starting server fail: "did not start")
            first = lite.acquire(self.uri)
            #: whether this connection is the first of this process on its Lite file (it
            #: holds the file's lock: nothing else writes to it meanwhile)
            self.first_on_file = first
            self._lite_file = self.uri
            # a store dropped without close() (a notebook cell run again) releases its file
            # when collected: its server stops and another program may open the file
            self._release_on_drop = weakref.finalize(self, lite.release_later, self.uri)
            # not at exit: a thread started while the interpreter ends can abort it; the
            # process's end frees the file (its lock descriptor closes, its server stops)
            self._release_on_drop.atexit = False
            try:
                lite.wait_for_lite_file(self.uri, lite_wait)
                if first:
                    lite.check_file(self.uri)
                lite.isolate()
            except BaseException:
                self.close()
                raise
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:  # pragma: no cover - a dependency
            self.close()
            raise StoreError(f"pymilvus is not installed: {exc}") from None
        rpc.quiet()
        if token:
            kwargs["token"] = token
        if _has_connection_manager():
            kwargs.setdefault("dedicated", True)  # close() then really closes the channel
        # the column writes go through pymilvus' ORM connection, which names the database
        # "default"; pymilvus keys Session consistency's last-write timestamps by database name,
        # so the client must name it the same way to see those writes (read-your-writes)
        kwargs.setdefault("db_name", "default")
        self._client_kwargs = dict(kwargs)
        try:
            return self._new_client(MilvusClient, kwargs)
        except BaseException as exc:
            self.close()
            if not isinstance(exc, Exception):
                raise
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot connect to Milvus at {self.display_uri}: "
                             f"{rpc.message(exc)}") from None

    def _new_client(self, client_class: Any, kwargs: dict[str, Any]) -> Any:
        """``MilvusClient(uri, **kwargs)``; for Milvus Lite, retried with backoff while its
        server process is alive but not yet listening (a loaded machine can stall it for
        seconds after the spawn), for at most ``lite_start`` seconds."""
        deadline = time.monotonic() + self.lite_start
        delay = 0.05
        while True:
            try:
                with warnings.catch_warnings():
                    # milvus-lite 2.5.1 imports pkg_resources, which warns on every start
                    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
                    return client_class(uri=self.uri, **kwargs)
            except Exception as exc:
                if not self.is_lite:
                    raise
                alive = lite.server_alive(self.uri)
                if alive and time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    delay = min(1.0, delay * 2)
                    continue
                raise self._not_started(exc, alive) from None

    def _not_started(self, exc: Exception, alive: bool | None) -> StoreError:
        """One line for a Milvus Lite server that did not start (or never answered)."""
        tail = lite.log_tail(1)
        said = f" (its log: {redact_text(tail[-1])[:160]})" if tail else ""
        if alive:
            return StoreError(
                f"the Milvus Lite server for {self.uri} did not start: its process runs but did "
                f"not listen within {self.lite_start:g} s{said} (a stalled or very busy "
                f"machine?); try again")
        if alive is None and "dir:" in rpc.message(exc):
            return StoreError(f"cannot open Milvus Lite file {self.uri}: {rpc.message(exc)}")
        return StoreError(f"the Milvus Lite server for {self.uri} did not start{said}; check that "
                          f"the file is a Milvus Lite database and its folder is writable")

    def _check_lite_path(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.uri))
        name = os.path.basename(self.uri)
        if not name.endswith(".db"):
            server = re.fullmatch(r"[\w.-]+:\d{1,5}", self.uri)  # host:port without a scheme
            raise StoreError(f"a Milvus Lite uri must be a file ending in .db, got {self.uri!r}"
                             + (f" (a Milvus server? give http://{self.uri})" if server else ""))
        if not os.path.isdir(parent):
            raise StoreError(f"cannot create Milvus Lite file {self.uri}: folder {parent} does "
                             f"not exist")
        if not _LITE_NAME.match(name) or len(name) > 36:
            raise StoreError(f"Milvus Lite file names may hold only letters, digits, '.', '-' and "
                             f"'_' and at most 36 characters, got {name!r}")
        # the server listens on <temp>/tmpXXXXXXXX_<name>.sock; a Unix socket path has at most
        # 107 bytes, and a longer one makes a server that runs but never listens
        sock = len(os.fsencode(tempfile.gettempdir())) + len(f"/tmpXXXXXXXX_{name}.sock")
        if sock > _MAX_SOCKET_PATH:
            raise StoreError(
                f"cannot start Milvus Lite for {self.uri}: its socket in the temp folder "
                f"{tempfile.gettempdir()} would have a {sock}-byte path, over the "
                f"{_MAX_SOCKET_PATH}-byte limit of Unix sockets; set TMPDIR to a shorter folder")

    def close(self) -> None:
        """Close the client; for Milvus Lite, the last user of a file stops its server."""
        self._closed = True
        self._pending = None
        self._close_orm()
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing twice or a server gone away is not an error here
                pass
        self._release_file()

    def _release_file(self) -> None:
        """This connection's use of its Milvus Lite file ends (the last one stops the server
        and frees the file)."""
        path, self._lite_file = self._lite_file, None
        drop, self._release_on_drop = self._release_on_drop, None
        if drop is not None:
            drop.detach()
        if path is not None:
            lite.release(path)

    def closed_message(self) -> str:
        """What a call on a closed connection says."""
        return (f"the connection to {self.display_uri} is closed (close() was called, or a "
                f"with-block ended: open a new Retriever or store)")

    # ----------------------------------------------------------------- calls
    def call(self, method: str, *args: Any, what: str, read: bool = False,
             expression: str | None = None, **kwargs: Any) -> Any:
        """``client.<method>(*args, **kwargs)`` with bounded retries and one-line errors.

        ``read``: a data read (gets the read consistency). ``expression``: the caller's own
        filter string, so that Milvus refusing it becomes ``InvalidInputError``.
        """
        if self._broken:
            raise StoreError(self._broken)
        if self.client is None:
            raise StoreError(self.closed_message())
        kwargs.setdefault("retry_times", rpc.RETRIES)
        if self.timeout is not None:
            kwargs.setdefault("timeout", self.timeout)
        if read and not self.is_lite:
            kwargs.setdefault("consistency_level", self._read_level())
        self._wait_for_lite_clock()
        try:
            with rpc.interrupts_held():
                return getattr(self.client, method)(*args, **kwargs)
        except Exception as exc:
            raise self._error(exc, what, expression) from None
        finally:  # a failed write may have reached the server in part
            self._after_lite_write(method, len(kwargs.get("data") or ()))

    def _wait_for_lite_clock(self) -> None:
        """On Milvus Lite, wait until the last write is in its server's clock's past
        (:mod:`.lite_clock`): a read sooner would not see it, a delete would not remove it."""
        if self.is_lite:
            lite_clock.wait(self._clock_key)

    def _after_lite_write(self, method: str, rows: int) -> None:
        if self.is_lite and method in ("insert", "upsert", "delete"):
            lite_clock.after_write(self._clock_key, rows)

    def _read_level(self) -> str:
        if self.read_consistency:
            return self.read_consistency
        level = "Strong" if self._first_read else "Session"
        self._first_read = False
        return level

    def after_delete(self) -> None:
        """The next read is Strong: the 2.3.5 server answers a delete with timestamp 0, so a
        Session read would not wait for it."""
        self._first_read = True

    def _error(self, exc: BaseException, what: str, expression: str | None) -> Exception:
        err = rpc.store_error(exc, what, expression)
        if not self.is_lite or isinstance(err, InvalidInputError):
            return err
        text = rpc.message(exc)
        if lite.server_alive(self.uri) is True and _unreachable(text):
            # the call failed because the server went away: a loaded machine reaps it a moment
            # later (it was then taken for alive, and the store never started a new one)
            deadline = time.monotonic() + 3.0
            while lite.server_alive(self.uri) is True and time.monotonic() < deadline:
                time.sleep(0.05)
        if lite.server_alive(self.uri) is False:
            tail = lite.log_tail(2, since=self._log_mark)
            self._log_mark = lite.log_size()
            lite.stop_server(self.uri)
            if rpc.is_damage(text) or any(rpc.is_damage(x) for x in tail):
                self._broken = str(lite.damaged(self.uri, "its Milvus Lite server stopped"))
                return StoreError(self._broken)
            said = lite.crash_words(tail[-1]) if tail else ""
            return self._restarted_after_crash(what, expression, redact_text(said)[:160])
        if rpc.is_damage(text) or any(rpc.is_damage(x) for x in lite.log_tail(1)):
            return lite.damaged(self.uri, text[:120])
        full = lite.disk_full(self.uri)
        if full:  # Milvus Lite says "Unexpected error in RPC handling" when its disk fills
            return StoreError(f"{err} ({full})")
        return err

    def _restarted_after_crash(self, what: str, expression: str | None, said: str) -> Exception:
        """The error for a request on which this file's Milvus Lite server died; the next call
        starts a new server (the file is intact: a damaged one is refused before this).

        Why: a service or a long script would otherwise answer every later request with "the
        server stopped" until restarted by hand; one bad request must cost only itself.
        """
        self._close_orm()
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # its server is gone: nothing to close there
                pass
        self._release_file()
        self._pending = self._reopen_with
        log.info("the Milvus Lite server of %s stopped during %s; it starts again with the "
                 "next request", self.uri, what)
        if expression and rpc.is_expression_error(said):
            return InvalidInputError(f"invalid filter expression {expression!r:.200}: "
                                     f"{rpc.readable_expression_error(said)} "
                                     f"(Milvus Lite's server stopped on it and starts again)")
        return StoreError(f"the Milvus Lite server of {self.uri} stopped during {what} (it "
                          f"crashed on that request{': ' + said if said else ''}); it starts "
                          f"again with the next request")

    def names(self, strict: bool = False) -> list[str]:
        """The collections at this uri, without the fine-code companions of each (``[]`` on
        failure unless ``strict``; ``[]`` for a Milvus Lite file that does not exist, without
        creating it)."""
        if self.lite_missing:
            return []
        try:
            # the fine-code companions (``<name>__fine``, ``<name>__codes``) are hidden
            return sorted(n for n in self.call("list_collections", what="listing collections")
                          if not n.endswith(("__fine", "__codes")))
        except StoreError:
            if strict:
                raise
            return []


def _unreachable(text: str) -> bool:
    """Whether a call failed because its server could not be reached."""
    lowered = text.lower()
    return "server unavailable" in lowered or "fail connecting" in lowered


def _has_connection_manager() -> bool:
    """pymilvus >= 3 shares connections unless asked for a dedicated one."""
    try:
        import pymilvus.client.connection_manager  # noqa: F401
    except ImportError:
        return False
    return True
