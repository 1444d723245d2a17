"""Milvus Lite process handling: one server process per database file.

Milvus Lite (``milvus-lite`` 2.5) runs a server process per ``.db`` file, started by pymilvus.
When a program that had the file open is killed (``kill -9``), its server notices the released
lock and exits on its own within a few seconds; opening the file meanwhile would start a second
server on the same data. :func:`wait_for_lite_file` waits for such an orphan to exit, and
refuses at once when a *running* program holds the file. Linux only (``/proc``); elsewhere these
are no-ops.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..errors import StoreError

log = logging.getLogger(__name__)


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
    try:
        import fcntl
    except ImportError:  # not POSIX: Milvus Lite does not run there either
        return
    # a server whose client is alive holds the lock file; an orphaned one does not
    lock = path.parent / f".{path.name}.lock"
    try:
        fh = open(lock, "a")
    except OSError:
        fh = None
    if fh is not None:
        with fh:
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise StoreError(
                    f"Milvus Lite file {path} is open in another running program (one process "
                    f"per file): close it there, or use a Milvus server URI"
                ) from None
            fcntl.lockf(fh, fcntl.LOCK_UN)
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

