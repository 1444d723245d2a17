"""The on-disk feature cache: written as it is computed, so an interrupted run resumes it.

Why: computing the frozen part of a backbone is the longest step of a CPU run on a large
archive (the pooled features of 100,000 images take hours on two cores). Kept in memory until
the end, a Ctrl-C or a SIGKILL at 90 % lost all of it, and the whole array existed twice at
the end (the batches and their concatenation). Here the rows go straight into
``<name>.partial.npy`` (a ``.npy`` file written at each batch's offset), with
``<name>.partial.json`` saying how many rows are on disk; the next run with the same key
continues from there, and the finished file is renamed to ``<name>.npy`` in one step. The key
(weights, preprocessing, file list with sizes and mtimes) is in the name, so a partial file is
only ever resumed by the same computation. Safe against the process dying (Ctrl-C, SIGKILL,
an out-of-memory kill); the writes are not fsynced, so after an operating-system crash or a
power cut the record may claim rows the disk never got: delete ``*.partial.*`` then.

Two runs filling the same cache at once: the first holds ``<name>.lock`` (``fcntl.flock``)
and writes the partial file; the other computes in memory and saves under a name of its own
before the same atomic rename, as before this module existed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .errors import TrainingError
from .progress_log import SHOWN

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
#: ``batches(first_row)`` yields ``(start_row, rows)`` for every row from ``first_row`` on
Batches = Callable[[int], Iterator[tuple[int, np.ndarray]]]

__all__ = ["partial_paths", "read_or_fill"]


def partial_paths(path: Path) -> tuple[Path, Path, Path]:
    """The unfinished array, its progress record and the writer's lock file for ``path``."""
    stem = path.name[: -len(".npy")] if path.name.endswith(".npy") else path.name
    return (path.with_name(f"{stem}.partial.npy"), path.with_name(f"{stem}.partial.json"),
            path.with_name(f"{stem}.lock"))


@contextlib.contextmanager
def _writer_lock(lock_path: Path) -> Iterator[bool]:
    """``True`` inside the block when this process holds the cache's writer lock, ``False``
    when another one does (or ``fcntl`` does not exist: then nothing is resumed)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield False
        return
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                log.warning("features: cannot lock %s (%s); this run computes the cache "
                            "without resuming", lock_path, exc.strerror or exc)
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: where a partial array's data starts (bytes) and the shape of one row
Layout = tuple[int, tuple[int, ...]]


class _OtherRowShape(Exception):
    """The unfinished file holds rows of another shape than the computation gives now."""


def _resume_point(part: Path, state: Path, rows: int) -> tuple[int, Layout | None]:
    """Rows already on disk and the partial array's layout, or ``(0, None)`` to start afresh."""
    if not (part.is_file() and state.is_file()):
        return 0, None
    try:
        done = int(json.loads(state.read_text(encoding="utf-8"))["done"])
        arr = np.load(part, mmap_mode="r")  # reads the header; nothing is written through it
        shape, dtype, offset = arr.shape, arr.dtype, int(arr.offset)
        del arr
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("features: unfinished cache %s unreadable (%s); starting afresh", part, exc)
        return 0, None
    if shape[0] != rows or dtype != np.float32 or not 0 <= done <= rows:
        log.warning("features: unfinished cache %s does not fit (%s rows, %d done, %d wanted); "
                    "starting afresh", part, shape[0], done, rows)
        return 0, None
    return done, (offset, tuple(shape[1:]))


def _record(state: Path, done: int, rows: int) -> None:
    tmp = state.with_name(f"{state.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"done": done, "rows": rows}), encoding="utf-8")
    os.replace(tmp, state)


def _new_partial(part: Path, shape: tuple[int, ...]) -> int:
    """Write the ``.npy`` header of a ``float32`` array of ``shape``; the data's byte offset."""
    with open(part, "wb") as f:
        np.lib.format.write_array_header_2_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                "fortran_order": False, "shape": shape})
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape)) * 4)
    return offset


def _fill(path: Path, rows: int, batches: Batches, emit: Progress) -> None:
    """Compute the rows not yet on disk into the partial array, then rename it to ``path``.
    Plain file writes, not a writable memory map: a full disk is an ``OSError`` here, where a
    memory map would end the process with SIGBUS."""
    part, state, _ = partial_paths(path)
    done, layout = _resume_point(part, state, rows)
    if layout is None:
        state.unlink(missing_ok=True)  # a record of an earlier file never vouches for a new one
    elif done:
        log.info("features: resuming %s at %d/%d rows", part, done, rows)
        emit({"event": "cache_resumed", "done": done, "total": rows, "path": str(part)})
    for start, out in batches(done):
        block = np.ascontiguousarray(out, dtype=np.float32)
        if layout is None:
            layout = (_new_partial(part, (rows, *block.shape[1:])), tuple(block.shape[1:]))
        elif layout[1] != tuple(block.shape[1:]):
            raise _OtherRowShape(f"rows of {layout[1]} on disk, {tuple(block.shape[1:])} now")
        with open(part, "r+b") as f:
            f.seek(layout[0] + start * block[0].nbytes)
            f.write(block.tobytes())
        _record(state, start + len(block), rows)  # after the rows reached the file
    state.unlink(missing_ok=True)  # before the rename: a crash between them recomputes
    os.replace(part, path)


def _fill_or_restart(path: Path, rows: int, batches: Batches, emit: Progress) -> None:
    try:
        _fill(path, rows, batches, emit)
    except _OtherRowShape as exc:
        part, state, _ = partial_paths(path)
        log.warning("features: unfinished cache %s does not fit (%s); starting afresh", part, exc)
        state.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        _fill(path, rows, batches, emit)


def _save_whole(path: Path, batches: Batches) -> np.ndarray:
    """Every row computed in memory and saved under a name of this process's own, then renamed
    to ``path`` (another process holds the partial file)."""
    out = np.concatenate([b for _, b in batches(0)])
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")  # concurrent runs: no clash
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def _complete(path: Path, rows: int, emit: Progress) -> np.ndarray | None:
    """The finished cache at ``path`` when it holds ``rows`` rows, else ``None``."""
    if not path.is_file():
        return None
    feats = np.load(path, allow_pickle=False)
    if feats.shape[0] != rows:
        log.warning("features: cache %s has %d rows for %d images; recomputing",
                    path, feats.shape[0], rows)
        return None
    log.info("features: cache hit %s", path, extra=SHOWN)
    emit({"event": "cache_hit", "path": str(path)})
    return feats.astype(np.float32, copy=False)


def read_or_fill(path: Path, rows: int, batches: Batches, emit: Progress) -> tuple[np.ndarray, str]:
    """The cached ``float32`` array of ``rows`` (>= 1) rows at ``path``: read when it is
    complete (``"hit"``), else computed, resuming an unfinished one, and saved
    (``"computed"``). The zero-byte lock file stays beside the cache (removing it would let a
    second writer in)."""
    cached = _complete(path, rows, emit)
    if cached is not None:
        return cached, "hit"
    part, _, lock = partial_paths(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _writer_lock(lock) as owner:
            cached = _complete(path, rows, emit) if owner else None
            if cached is not None:  # finished by the writer that held the lock until just now
                return cached, "hit"
            if owner:
                _fill_or_restart(path, rows, batches, emit)
                feats = np.load(path, allow_pickle=False)  # the rows were never all in memory
            else:
                feats = _save_whole(path, batches)
    except OSError as exc:
        kept = ("; the rows already written are kept and the next run continues from them"
                if part.is_file() else "")
        raise TrainingError(
            f"cannot write the feature cache {path}: {exc.strerror or exc}; free space there or "
            f"choose another folder (--cache-dir, $RSIR_CACHE){kept}") from None
    log.info("features: saved cache %s", path, extra=SHOWN)
    emit({"event": "cache_saved", "path": str(path)})
    return feats, "computed"
