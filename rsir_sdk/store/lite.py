"""Milvus Lite process handling: one server process per database file.

Milvus Lite (``milvus-lite`` 2.5.1, pinned) runs a server process per ``.db`` file, started
through pymilvus. This module makes that process behave:

* **Its own session** (:func:`isolate`): the server is started with ``start_new_session=True``
  and its output goes to a log file, so Ctrl-C in a terminal (SIGINT to the whole foreground
  process group) reaches only our process, which then writes what it encoded and exits with one
  line, and the server's glog/ANTLR lines never reach the user.
* **Released on close** (:func:`acquire` / :func:`release`): pymilvus 3.0.2's
  ``MilvusClient.close()`` leaves the server running and the file locked; stores count their
  users of each file and the last one stops its server.
* **One process per file, surely** (:func:`_hold`): the first user takes an exclusive lock
  on a sidecar ``.<name>.rsir-lock`` that is never removed, so two programs opening one new
  file at once cannot both start a server on it.
* **Damage found on open** (:func:`check_file`): the file is SQLite; a header check and
  ``PRAGMA quick_check`` (about 1 ms per MB) refuse a damaged file before Milvus Lite would
  silently serve part of it or hang on writes.
* **No logs left behind** (:func:`remove_stale_logs`): the empty logs of killed processes are
  removed whenever a server is started.
* **A slow start survived** (in :mod:`.connect`): the first connection is retried while the
  server process is alive, so a server stalled by a busy machine is waited for, and one that
  did not start is reported in one line.
* **Orphans waited for** (:func:`wait_for_lite_file`): when a program that had the file open is
  killed (``kill -9``), its server notices the released lock and exits on its own within a few
  seconds; opening the file meanwhile would start a second server on the same data.

Linux and macOS (``/proc`` parts are no-ops where there is none).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any

from ..errors import StoreError
from . import lite_clock

log = logging.getLogger(__name__)

_SQLITE_HEADER = b"SQLite format 3\x00"
#: a table every Milvus Lite (2.5) file holds from its first start
LITE_TABLE = "collection_meta"
_lock = threading.Lock()
_users: dict[str, int] = {}  # resolved path -> open stores in this process
_held: dict[str, Any] = {}  # resolved path -> its lock file, open while this process serves it
_LOG_NAME = re.compile(r"rsir-milvus-lite-([0-9]+)\.log")


class _IsolatingSubprocess(types.ModuleType):
    """Stands in for ``subprocess`` inside ``milvus_lite.server``: its ``Popen`` starts the
    server in a new session with stdin closed and stdout/stderr in a log file."""

    rsir_isolated = True

    def __init__(self) -> None:
        super().__init__("subprocess")

    def __getattr__(self, name: str) -> Any:  # TimeoutExpired, DEVNULL, ... from the real module
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802 (mirrors subprocess)
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        remove_stale_logs()
        path = log_path()
        with open(path, "ab") as fh:  # Popen duplicates the descriptor; ours closes at once
            kwargs.setdefault("stdout", fh)
            kwargs.setdefault("stderr", fh)
            return subprocess.Popen(*args, **kwargs)


def log_path() -> str:
    """The file Milvus Lite servers started by this process write their output to."""
    return os.path.join(tempfile.gettempdir(), f"rsir-milvus-lite-{os.getpid()}.log")


def isolate() -> None:
    """Make ``milvus_lite`` start its servers in their own session (idempotent)."""
    import warnings

    with warnings.catch_warnings():
        # milvus-lite 2.5.1 imports pkg_resources, which warns on every start
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import milvus_lite.server as server

    if not getattr(server.subprocess, "rsir_isolated", False):
        server.subprocess = _IsolatingSubprocess()


def remove_stale_logs() -> list[str]:
    """Remove the empty ``rsir-milvus-lite-<pid>.log`` files of processes that no longer run.

    A process removes its own log when it closes its last store; one that was killed cannot,
    and its (usually empty: Milvus Lite logs errors only) file would stay in the temp folder for
    good. Logs with content are kept (they may explain a crash), as are those of live
    processes. Returns the paths removed.
    """
    folder = tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _LOG_NAME.fullmatch(name)
        if match is None or int(match.group(1)) == os.getpid() or _pid_alive(int(match.group(1))):
            continue
        path = os.path.join(folder, name)
        try:
            if os.stat(path).st_size == 0:
                os.unlink(path)
                removed.append(path)
        except OSError:  # removed meanwhile by another process, or not ours to remove
            continue
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def server_key(db_file: str | os.PathLike) -> str:
    """The resolved path of ``db_file``: the key of its server (one per file and process)."""
    return str(Path(db_file).absolute().resolve())


def acquire(db_file: str | os.PathLike) -> bool:
    """Count one more user of ``db_file`` in this process; True when it is the first, which
    takes the file's lock (:func:`_hold`: refused when another program holds it)."""
    key = server_key(db_file)
    with _lock:
        if not _users.get(key):
            _hold(key, str(db_file))
        _users[key] = _users.get(key, 0) + 1
        return _users[key] == 1


def release_later(db_file: str | os.PathLike) -> None:
    """:func:`release` from a thread of its own: what a store dropped without ``close()`` runs
    when it is collected. A collection pass can start inside any allocation, also one made
    while this thread holds the module's lock (in :func:`acquire` or :func:`release`); calling
    :func:`release` there would wait on that lock forever."""
    try:
        threading.Thread(target=release, args=(db_file,), name="rsir-lite-release",
                         daemon=True).start()
    except RuntimeError:  # the interpreter is shutting down: its exit stops the servers
        pass


def _hold(key: str, shown: str) -> None:
    """Take this process's exclusive lock on the Lite file ``key``: ``flock`` on a sidecar
    ``.<name>.rsir-lock`` beside it, held until the last user closes it, never removed.

    Why: Milvus Lite's own lock file (``.<name>.lock``) is removed by any ``Server`` object
    that is dropped, also one whose start failed because another process held the file; a
    third opener then locked a new lock file and started a second server on the same data (two
    ``rsir index`` runs into one new file: every item stored twice, or fine codes missing). A
    lock file that is never removed cannot be replaced under its holder. A process that dies
    releases it at once; the orphaned server it leaves is waited for by
    :func:`wait_for_lite_file`.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: Milvus Lite does not run there either
        return
    path = Path(key)
    sidecar = path.parent / f".{path.name}.rsir-lock"
    try:
        try:
            fh = open(sidecar, "a")
        except PermissionError:
            if not sidecar.exists():
                raise
            fh = open(sidecar)  # another user's lock file: flock works on a read-only one
    except OSError as exc:
        raise StoreError(
            f"cannot open Milvus Lite file {shown}: its folder {path.parent} is not writable "
            f"({exc.strerror or exc}); Milvus Lite writes beside the file even to search it: "
            f"copy the file to a writable folder") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise StoreError(f"Milvus Lite file {shown} is open in another running program (one "
                         f"process per file): close it there, or use a Milvus server URI"
                         ) from None
    _held[key] = fh


def _unhold(key: str) -> None:
    fh = _held.pop(key, None)
    if fh is not None:
        fh.close()  # closing the descriptor releases the flock


def release(db_file: str | os.PathLike) -> None:
    """One user less; the last one stops the file's Milvus Lite server (releasing the file)."""
    key = server_key(db_file)
    with _lock:
        left = _users.get(key, 0) - 1
        if left > 0:
            _users[key] = left
            return
        _users.pop(key, None)
        try:
            stop_server(key)
        finally:
            _unhold(key)
    if not _users:
        try:
            os.unlink(log_path())
        except OSError:
            pass


def stop_server(db_file: str | os.PathLike) -> None:
    """Stop the Milvus Lite server this process runs for ``db_file`` (if any)."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:  # pragma: no cover - milvus-lite is a dependency
        return
    key = server_key(db_file)
    lite_clock.forget(key)
    with server_manager_instance._lock:
        server = server_manager_instance._servers.pop(key, None)
    if server is not None:
        try:
            server.stop()
        except Exception:  # a server that is already gone
            pass


def server_alive(db_file: str | os.PathLike) -> bool | None:
    """Whether this process's Milvus Lite server for ``db_file`` still runs (None: none known)."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:  # pragma: no cover
        return None
    server = server_manager_instance._servers.get(server_key(db_file))
    proc = getattr(server, "_p", None)
    if proc is None:
        return None
    return proc.poll() is None


def log_tail(lines: int = 3, since: int = 0) -> list[str]:
    """The last non-empty lines Milvus Lite servers of this process wrote (after byte
    ``since`` of the log: :func:`log_size` taken earlier, so that an earlier crash's last
    words are not read as a later one's)."""
    try:
        with open(log_path(), "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            # a log shorter than the mark was removed and begun again (its last user closed)
            fh.seek(max(0, since if since <= size else 0, size - 8192))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [x.strip() for x in text.splitlines() if x.strip()][-lines:]


def log_size() -> int:
    """How many bytes the Milvus Lite servers of this process have written to their log."""
    try:
        return os.path.getsize(log_path())
    except OSError:
        return 0


#: a glog line's prefix (``E20261207 23:19:02.431584 12425 schema_util.cpp:615] ``) and the
#: server's tags after it (``[SERVER][ParseExpr][grpcpp_sync_ser][]``)
_LOG_PREFIX = re.compile(r"^[IWEF]\d{8} [\d:.]+\s+\d+\s+\S+:\d+\]\s*(?:\[[^\]]*\])*\s*")


def crash_words(line: str) -> str:
    """What a Milvus Lite server's last log line says, without its log prefix and tags; ``""``
    when nothing is left worth showing (``false``: the line of a division by zero)."""
    text = _LOG_PREFIX.sub("", line.strip()).strip()
    return text if len(text) > 8 else ""


def check_file(db_file: str | os.PathLike) -> None:
    """Refuse a Milvus Lite file that is not SQLite or fails ``PRAGMA quick_check``.

    Raises :class:`~rsir_sdk.errors.StoreError` saying the file is damaged; nothing is written.
    A missing or empty file passes (Milvus Lite creates it).
    """
    path = Path(db_file)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    try:
        with open(path, "rb") as fh:
            header = fh.read(16)
    except OSError as exc:
        raise StoreError(f"cannot read Milvus Lite file {path}: {exc.strerror or exc}") from None
    if header != _SQLITE_HEADER:
        raise StoreError(
            f"{path} is not a Milvus Lite database file (it does not start with the SQLite "
            f"header): give another .db path, or restore the file"
        )
    tables: list[str] = []
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = [r[0] for r in con.execute("PRAGMA quick_check(3)").fetchall()]
            if rows == ["ok"]:
                tables = [r[0] for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        rows = [str(exc)]
    if rows != ["ok"]:
        first = " ".join(str(rows[0]).split()) if rows else "no answer"
        raise damaged(path, f"SQLite quick_check: {first[:160]}")
    if tables and LITE_TABLE not in tables:  # another program's database: leave it alone
        shown = ", ".join(sorted(tables)[:5]) + (" ..." if len(tables) > 5 else "")
        raise StoreError(
            f"{path} is an SQLite database of another program, not a Milvus Lite file (its "
            f"tables: {shown}); nothing was written: give another .db path")


#: free bytes below which a failed Milvus Lite call is put down to a full disk
DISK_FULL_BYTES = 16 * 2**20


def disk_full(db_file: str | os.PathLike) -> str:
    """Why a failed call on ``db_file`` failed when the disk holding it is (nearly) full, in
    words for the user; ``""`` otherwise. Milvus Lite itself answers "Unexpected error in RPC
    handling" and names nothing."""
    folder = os.path.dirname(os.path.abspath(db_file))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    if free >= DISK_FULL_BYTES:
        return ""
    return (f"the disk holding {folder} is full ({free / 2**20:.1f} MB free): free space, then "
            f"run the command again")


def damaged(path: str | os.PathLike, detail: str) -> StoreError:
    """The error for a damaged Milvus Lite file."""
    return StoreError(
        f"Milvus Lite file {path} is damaged ({detail}); nothing was written. Restore it from a "
        f"backup, or re-index into a new file"
    )


def lite_server_pids(db_file: str | os.PathLike) -> list[int]:
    """Process ids of Milvus Lite servers serving ``db_file`` (Linux; ``[]`` elsewhere)."""
    target = os.path.abspath(db_file)
    out: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
        except OSError:
            continue
        if len(args) >= 2 and args[0].endswith(b"/milvus") and b"milvus_lite" in args[0]:
            if os.fsdecode(args[1]) == target:
                out.append(int(entry))
    return out


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def wait_for_lite_file(db_file: str | os.PathLike, timeout: float = 30.0) -> None:
    """Make sure no other process serves a Milvus Lite file before opening it.

    Milvus Lite allows one process per file. When a process that had the file open is killed
    (``kill -9``), its Lite server notices the released lock and exits on its own within a
    few seconds; opening the file meanwhile would start a second server on the same data. This
    waits for such a server to exit. A file that a *running* program holds raises
    :class:`~rsir_sdk.errors.StoreError` at once.
    """
    path = Path(db_file).absolute()
    pids = lite_server_pids(path)
    if not pids or any(_parent_pid(p) == os.getpid() for p in pids):
        return  # nobody serves it, or this process does (pymilvus reuses its own server)
    if _held_by_running_client(path, pids):
        raise StoreError(
            f"Milvus Lite file {path} is open in another running program (one process "
            f"per file): close it there, or use a Milvus server URI"
        )
    deadline = time.monotonic() + timeout
    if pids:
        log.info("waiting for the Milvus Lite server of an earlier run (pid %s) to exit", pids)
    while pids:
        if time.monotonic() > deadline:
            raise StoreError(
                f"Milvus Lite file {path} is still served by process {pids} after {timeout:.0f}s; "
                f"stop that process (kill {' '.join(map(str, pids))}) and re-run"
            )
        time.sleep(0.1)
        pids = lite_server_pids(path)


def _orphaned(pids: list[int]) -> bool:
    """True when every server in ``pids`` lost its client (re-parented to init, or gone)."""
    parents = [_parent_pid(p) for p in pids]
    return all(parent is None or parent == 1 or not os.path.exists(f"/proc/{parent}")
               for parent in parents)


def _held_by_running_client(path: Path, pids: list[int]) -> bool:
    """Whether a live program holds the Lite lock file of ``path``.

    A client holds ``.<name>.lock`` for as long as it runs. An orphaned server probes the same
    lock to notice that its client is gone and briefly holds it while it exits, so a busy lock
    is tried again for a few seconds and a server whose client is dead never counts as held.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: Milvus Lite does not run there either
        return False
    try:
        fh = open(path.parent / f".{path.name}.lock", "a")
    except OSError:
        return False
    with fh:
        until = time.monotonic() + 3.0
        while True:
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                if _orphaned(pids) or not lite_server_pids(path):
                    return False
                if time.monotonic() > until:
                    return True
                time.sleep(0.1)
                continue
            fcntl.lockf(fh, fcntl.LOCK_UN)
            return False
