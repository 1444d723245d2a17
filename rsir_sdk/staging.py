"""Folders and files replaced whole: a reader sees the old version or the new one, not a mix.

Why: a bundle is several files that must agree (the manifest records the model's sha256), and
a report is read by other tools. Written in place, a kill between two writes left a bundle
that had worked refusing to load ("model.onnx does not match the manifest's model_sha256"), and
an interrupted report emptied the complete one before it. So a folder is written whole in a
hidden sibling *stage* and swapped in: one ``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere
two renames, the old folder kept under a hidden name until the new one is in place (a reader
may find no folder for that moment; a kill then is undone by the next write). Where a folder
cannot be renamed (a mount point, the working directory, a parent that is not writable) its
files are replaced one by one, the manifest removed first and written last, so a kill leaves
the old bundle's files without a manifest (refused at load, never a mix). A file is written
beside its target and renamed over it. What a killed writer leaves behind (a stage, an old
folder moved aside, a temporary file) is removed, or put back, by the next write.

Stage names carry the host, the process id and a random token: a writer never touches another
writer's stage, and a stage is judged abandoned only when its process on this host is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import socket
import stat
import sys
from pathlib import Path
from typing import Iterable, Iterator

_WRITING = "writing"
_OLD = "old"
#: the name whose hidden stages sit inside a folder written in place
_INNER = "stage"
#: errors of a folder rename that mean "write in place instead" (a mount point, the working
#: directory on some systems, a parent folder the user may not write in)
_CANNOT_RENAME = {errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES, errno.EROFS}


def _host() -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40]


def _hidden(target: Path, kind: str) -> Path:
    return target.parent / (f".{target.name}.{kind}-{_host()}-{os.getpid()}-"
                            f"{secrets.token_hex(4)}")


def can_swap(out: Path) -> bool:
    """Whether ``out`` (absolute) can be replaced by renaming a sibling folder over it."""
    if os.path.ismount(out) or not os.access(out.parent, os.W_OK | os.X_OK):
        return False
    cwd = os.getcwd()
    return not (cwd == str(out) or cwd.startswith(str(out) + os.sep))


def new_stage(out: Path) -> Path:
    """An empty hidden folder beside ``out`` (same file system) for this writer."""
    stage = _hidden(out, _WRITING)
    stage.mkdir()
    return stage


def stage_for(out: Path) -> Path:
    """Where this writer writes the new version of the folder ``out`` (absolute): beside it
    when ``out`` can be swapped, else inside it (a mount point, the working directory, a
    parent folder not writable: :func:`install` then replaces the files one by one). What
    killed writers left there is cleaned up first."""
    if out.exists():
        recover(out / _INNER)
    if not out.exists() or can_swap(out):
        recover(out)
        return new_stage(out)
    return new_stage(out / _INNER)


def install(stage: Path, out: Path, own_files: Iterable[str], last: str) -> None:
    """Make the complete folder ``stage`` (from :func:`stage_for`) the folder ``out``: swapped
    in whole (:func:`put_in_place`), or where ``out`` cannot be renamed, its files replaced
    one by one with ``last`` (the manifest) written last (:func:`replace_files`)."""
    names = list(own_files)
    if stage.parent == out:
        replace_files(stage, out, names, last)
        return
    try:
        if out.exists() and not can_swap(out):
            raise OSError(errno.EBUSY, "cannot be renamed", str(out))
        put_in_place(stage, out, names)
    except OSError as exc:
        if not cannot_rename(exc):
            raise
        inner = new_stage(out / _INNER)
        try:
            for name in names:
                if (stage / name).exists():
                    _move(stage / name, inner / name)
            replace_files(inner, out, names, last)
        finally:
            discard(inner)


def discard(stage: Path) -> None:
    """Remove a stage (after a failure; after a swap it holds the old version)."""
    if stage.is_symlink():
        stage.unlink()
    else:
        _rmtree(stage)


def _rmtree(path: Path) -> None:
    """Remove a folder, read-only ones too (an old bundle folder of mode 0555 stayed whole
    beside the new one after each write)."""
    def writable_then_again(fn, name, _exc) -> None:  # noqa: ANN001 (shutil's callback)
        try:
            os.chmod(os.path.dirname(name), stat.S_IRWXU)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, stat.S_IRWXU)
            fn(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=writable_then_again)


@contextlib.contextmanager
def writing(out: Path) -> Iterator[None]:
    """One writer of the folder ``out`` at a time: an exclusive lock on the folder that holds
    it (no lock file left behind; writers of other folders there wait their turn, seconds).
    Two writers in place at once left one writer's model under the other's manifest."""
    with locked(out.parent):
        yield


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``fcntl.flock``) on ``path`` for the ``with`` block: a
    folder as it is, a file created if missing. Where ``fcntl`` does not exist (Windows) or
    ``path`` cannot be opened, the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(path, os.O_RDONLY) if os.path.isdir(path) else \
            os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def put_in_place(stage: Path, out: Path, own_files: Iterable[str]) -> None:
    """Make the complete folder ``stage`` the folder ``out``.

    Entries of an existing ``out`` that are not among ``own_files`` (what the writer writes:
    a user's notes beside a bundle) are linked (or copied) into the stage first, so they stay;
    the old folder's permissions carry over. The old version ends in ``stage``, for
    :func:`discard`. Raises ``OSError`` when ``out`` cannot be renamed (then see
    :func:`replace_files`).
    """
    if not out.exists():
        os.rename(stage, out)
        return
    if not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    own = set(own_files)
    for entry in out.iterdir():
        if entry.name in own or (stage / entry.name).exists() or \
                entry.name.startswith(f".{_INNER}.") or stage.is_relative_to(entry):
            continue  # a stage or lock of a writer in place is not the user's
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, stage / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(stage / entry.name))
    shutil.copymode(out, stage)
    if _exchange(stage, out):
        return
    old = _hidden(out, _OLD)
    os.rename(out, old)     # a kill here leaves `old` complete: recover() puts it back
    try:
        os.rename(stage, out)
    except BaseException:
        os.rename(old, out)
        raise
    os.rename(old, stage)


def replace_files(stage: Path, out: Path, names: Iterable[str], last: str) -> None:
    """Move the files ``names`` of ``stage`` into the folder ``out`` one by one, where ``out``
    itself cannot be renamed: ``last`` (the manifest) is removed first and moved last, so a
    kill between leaves no ``last`` (refused at load), never old and new files under one
    ``last``. Files of ``out`` among ``names`` that the stage lacks are removed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / last).unlink(missing_ok=True)
    for name in names:
        if name == last:
            continue
        if (stage / name).exists():
            os.replace(stage / name, out / name)
        else:
            (out / name).unlink(missing_ok=True)
    os.replace(stage / last, out / last)


def recover(out: Path) -> None:
    """Clean up what killed writers of ``out`` on this host left: their stages and temporary
    files are removed; an old folder moved aside whose new one never arrived is put back."""
    prefix, host = f".{out.name}.", _host()
    try:
        entries = sorted(out.parent.iterdir())
    except OSError:
        return
    for path in entries:
        if not path.name.startswith(prefix):
            continue
        kind, _, rest = path.name[len(prefix):].partition("-")
        at, _, pid = rest.rsplit("-", 1)[0].rpartition("-")
        if kind not in (_WRITING, _OLD) or at != host or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == _OLD and not out.exists() and path.is_dir() and not path.is_symlink():
            os.rename(path, out)
        elif path.is_dir() and not path.is_symlink():
            _rmtree(path)
        else:
            path.unlink(missing_ok=True)


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) in one step: beside it, flushed, then renamed over it
    (its permissions kept).

    A link is followed (its target is replaced); something that is not a regular file
    (``/dev/stdout``, a pipe) is written as it is."""
    path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        return
    recover(path)
    tmp = _hidden(path, _WRITING)
    try:
        fh = open(tmp, "w", encoding="utf-8", newline="")
    except OSError as exc:  # a folder you may not write in, a file you may: as before, in
        if exc.errno not in _CANNOT_RENAME or not os.access(path, os.W_OK):  # place
            raise
        with open(path, "w", encoding="utf-8", newline="") as out:
            out.write(text)
        return
    try:
        with fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _move(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copy2(src, dst)


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)
    return dst


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (never guessed where it cannot be asked:
    ``os.kill(pid, 0)`` ends the process on Windows)."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
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


def cannot_rename(exc: OSError) -> bool:
    """Whether a folder swap failed in a way that writing in place avoids."""
    return exc.errno in _CANNOT_RENAME
