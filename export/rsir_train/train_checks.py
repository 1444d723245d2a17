"""A ``rsir train`` command's outputs and device, checked before any image is read.

Why: training takes minutes to hours, and these problems used to surface only at its end, as
a traceback (``--out`` naming a file, a folder that cannot be created) or at its start as one
(``--device cuda`` on a CPU build of torch), and a bundle written inside the archive it was
trained on left its checkpoint folder among the images. Each is now one
:class:`~rsir_train.errors.TrainingError` line (exit status 1) before the work starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

from .errors import TrainingError

log = logging.getLogger(__name__)

__all__ = ["check_train_outputs", "check_device"]


def check_train_outputs(args: argparse.Namespace) -> None:
    """``--out`` (and AHCL's checkpoint folder, ``--work-dir`` or ``<out>.work``) can be
    written and lie outside the archive ``--data``."""
    folders = [("--out", args.out)]
    if getattr(args, "method", None) == "ahcl":
        folders.append(("--work-dir", args.work_dir or f"{args.out}.work"))
    data = Path(args.data)
    archive = data.resolve() if data.is_dir() else None
    for flag, folder in folders:
        path = Path(folder)
        if path.exists() and not path.is_dir():
            raise TrainingError(f"{flag} {folder} is a file: give a folder")
        if archive is not None and _inside(path.resolve(), archive):
            raise TrainingError(f"{flag} {folder} lies inside the archive {args.data}: the "
                                f"bundle and its checkpoints would be listed among its images; "
                                f"choose a folder outside it")
        problem = _creatable(path)
        if problem:
            raise TrainingError(f"{flag} {folder} cannot be written: {problem}")
    _check_not_replacing(args)
    _say_checkpoints(args)


def _say_checkpoints(args: argparse.Namespace) -> None:
    """AHCL without ``--resume`` starts over and replaces an earlier run's checkpoints (a
    killed run re-run without it lost its progress without a word); with ``--resume`` and
    none there, it starts from the beginning. Either is said in one warning."""
    if getattr(args, "method", None) != "ahcl":
        return
    work = Path(args.work_dir) if args.work_dir else Path(str(args.out).rstrip("/\\") + ".work")
    found = work.is_dir() and any(work.rglob("checkpoint.pt"))
    resume = getattr(args, "resume", False)
    if found and not resume:
        log.warning("%s holds checkpoints of an earlier run: this run starts over and replaces "
                    "them (to continue that run instead, stop this one and add --resume)", work)
    elif resume and not found:
        log.warning("--resume: no checkpoint in %s, so training starts from the beginning "
                    "(check --out / --work-dir)", work)


def _check_not_replacing(args: argparse.Namespace) -> None:
    """A non-empty ``--out`` is replaced only when asked (``--overwrite``), or by ``--resume``
    (AHCL: the same run finished, or exported again): an earlier bundle may be the encoder of
    a collection, and its loss would be silent."""
    out = Path(args.out)
    if not out.is_dir() or not any(out.iterdir()) or getattr(args, "overwrite", False) \
            or getattr(args, "resume", False):
        return
    what = "a bundle" if (out / "manifest.json").is_file() else "files"
    more = ", or --resume to finish or export that run again" if args.method == "ahcl" else ""
    raise TrainingError(f"--out {args.out} already holds {what}: choose another --out, or "
                        f"replace it with --overwrite{more}")


def check_device(device: str | None) -> None:
    """``--device cuda[:N]`` names a CUDA device torch can use."""
    if not device or not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise TrainingError(f"--device {device}: torch sees no CUDA device (a CPU build of "
                            f"torch, or no GPU visible); use --device cpu or leave --device out")
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise TrainingError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA "
                            f"device(s), numbered from 0")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _creatable(path: Path) -> str | None:
    """Why a folder cannot be made at ``path`` (its nearest existing parent refuses a new
    folder: read-only, not a folder, a virtual file system), or None. Tried for real with a
    temporary folder, since permission bits say nothing to root or on /proc."""
    parent = path if path.is_dir() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rsir-probe-", dir=parent))
    except OSError as exc:
        return f"{parent} refuses new folders ({exc.strerror or exc})"
    return None
