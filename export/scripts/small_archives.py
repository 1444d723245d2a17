"""Draw small-archive subsets of a labelled folder archive: seeded, per class, optionally uneven.

Why: the training defaults must hold on a user's archive, which is rarely 200 images a class
(issue 21). This draws ``--per-class`` images of each class (``--uneven``: each class gets a
size drawn uniformly from [per_class / 3, 5 * per_class / 3], seeded, so the mean stays near
``per_class``) from ``--data`` and writes a folder archive of symbolic links to the original
files (bytes unchanged, nothing copied) under ``--out``:

    python export/scripts/small_archives.py --data ../shared/data/nwpu12 --per-class 30 \\
        --seed 0 --out runs/data/nwpu12-30-s0
    python export/scripts/small_archives.py --data ../shared/data/nwpu12 --per-class 30 \\
        --seed 2 --uneven --out runs/data/nwpu12-30u-s2

Files are listed in sorted order per class before the draw, so a draw is a function of the
folder's contents, ``--per-class``, ``--seed`` and ``--uneven`` only. Prints the class sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def draw(data: Path, per_class: int, seed: int, uneven: bool) -> dict[str, list[Path]]:
    """``{class: [files]}``: a seeded per-class draw (classes in sorted order, one generator)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {}
    for cls in sorted(p.name for p in data.iterdir() if p.is_dir()):
        files = sorted(f for f in (data / cls).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        n = per_class
        if uneven:
            n = int(rng.integers(max(2, per_class // 3), 5 * per_class // 3 + 1))
        n = min(n, len(files))
        out[cls] = [files[i] for i in sorted(rng.choice(len(files), size=n, replace=False))]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--per-class", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uneven", action="store_true")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} exists and is not empty", file=sys.stderr)
        return 1
    chosen = draw(args.data.resolve(), args.per_class, args.seed, args.uneven)
    for cls, files in chosen.items():
        (args.out / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            os.symlink(f, args.out / cls / f.name)
    print(json.dumps({cls: len(files) for cls, files in chosen.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
