"""Folders and files replaced whole: a reader sees the old version or the new one, never half.

Why: a bundle is several files that must agree (the manifest records the model's sha256), and
a report is read by other tools. Written in place, a kill between two writes left a bundle
that had worked refusing to load ("model.onnx does not match the manifest's model_sha256"), and
an interrupted report emptied the complete one before it. So a folder is written whole in a
hidden sibling *stage* and swapped in (one ``renameat2(RENAME_EXCHANGE)`` on Linux; else two
renames, the old folder kept under a hidden name until the new one is in place), and a file is
written beside its target and renamed over it. What a kill leaves behind (a stage, or an old
folder moved aside) is cleaned up, or put back, by the next write (:func:`recover`).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable

_WRITING = "writing"
_OLD = "old"


def _hidden(out: Path, kind: str, pid: int) -> Path:
    return out.parent / f".{out.name}.{kind}-{pid}"


def new_stage(out: Path) -> Path:
    """An empty hidden folder beside ``out`` (same file system) for this process to write in."""
    stage = _hidden(out, _WRITING, os.getpid())
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    return stage


def discard(stage: Path) -> None:
    """Remove a stage (after a failure; after a swap it holds the old version)."""
    shutil.rmtree(stage, ignore_errors=True)


def put_in_place(stage: Path, out: Path, own_files: Iterable[str]) -> None:
    """Make the complete folder ``stage`` the folder ``out`` in one step.

    Entries of an existing ``out`` that are not among ``own_files`` (what the writer writes:
    a user's notes beside a bundle) are linked (or copied) into the stage first, so they stay.
    The old version ends in ``stage``, for :func:`discard`.
    """
    if not out.exists():
        os.rename(stage, out)
        return
    if not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    own = set(own_files)
    for entry in out.iterdir():
        if entry.name in own or (stage / entry.name).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, stage / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(stage / entry.name))
    if _exchange(stage, out):
        return
    old = _hidden(out, _OLD, os.getpid())
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out, old)     # a kill here leaves `old` complete: recover() puts it back
    os.rename(stage, out)
    os.rename(old, stage)


def recover(out: Path) -> None:
    """Clean up what killed writers of ``out`` left: their stages are removed; an old version
    moved aside whose new one never arrived is put back as ``out``."""
    prefix = f".{out.name}."
    for path in sorted(out.parent.iterdir()):
        if not path.name.startswith(prefix):
            continue
        kind, _, pid = path.name[len(prefix):].rpartition("-")
        if kind not in (_WRITING, _OLD) or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == _OLD and not out.exists():
            os.rename(path, out)
        else:
            shutil.rmtree(path, ignore_errors=True)


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) in one step: beside it, flushed, then renamed over it.

    A link is followed (its target is replaced); something that is not a regular file
    (``/dev/stdout``, a pipe) is written as it is."""
    path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        return
    tmp = path.parent / f".{path.name}.{_WRITING}-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)
    return dst


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where
    the system or its file system does not offer it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_cwd, exchange = -100, 2
    return fn(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0
