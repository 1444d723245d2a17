"""Would a colour thumbnail beside the pooled features make eurosat's fine code hold? (issue 20)

Why: the fine code (ITQ bits of the pooled features) meets every bar on nwpu12 but not on
eurosat, where the pooled features themselves put a JPEG q70 copy first only 0.768 of the time
(docs/similar.md). JPEG keeps each 8 x 8 block's mean (its DC) almost exactly and a global
brightness change is removed by subtracting the image's mean colour, so a tiny colour thumbnail
should be robust exactly where the features are not; it cannot see a 90-degree rotation, which
the features handle. This measures, on one bundle's archive, the rank-1 rate of each change
(same file, JPEG q70, 90% centre crop, brightness x1.1; the 90-degree rotation in the top 10)
for: the bundle's fine code (its graph, ``Encoder.encode_both``), the thumbnail code alone, and
the two concatenated (one Hamming distance over both parts). Everything the thumbnail code
needs is computable inside the ONNX graph from the same uint8 input (an average pool, a mean,
one matrix product, a sign).

Thumbnail code: the image box-resized to ``s x s`` (s = 8), its mean colour subtracted, L2
normalised; PCA fitted on ``--fit`` other images of the archive (never the database draw);
``--thumb-bits`` sign bits of the leading components (centred on the fit mean).

    python export/scripts/thumbnail_fine_code.py runs/bundles/sim-eurosat-itq-64 \\
        --data ../shared/data/eurosat --json runs/thumbnail_eurosat.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fine_code_length import CHANGES  # noqa: E402 (the changes of benchmarks/similar.py)

from rsir_sdk import Encoder  # noqa: E402
from rsir_sdk.codes import hamming_distances  # noqa: E402
from rsir_train.fine_code import FineCodeConfig, fit_fine_code  # noqa: E402

EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def _dihedral(x: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations and reflections of an ``(s, s, c)`` array."""
    rots = [np.rot90(x, k) for k in range(4)]
    return rots + [r[:, ::-1] for r in rots]


def canonical(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``x`` turned and flipped to the one of its 8 orientations whose grey image scores
    highest against a fixed ramp ``mask``: a 90-degree rotation (or a flip) of the image gives
    the same thumbnail, whenever the best score is not tied."""
    views = _dihedral(x)
    scores = [float((v.mean(axis=2) * mask).sum()) for v in views]
    return views[int(np.argmax(scores))]


def thumbnails(images: list[np.ndarray], size: int, turn: bool = False) -> np.ndarray:
    """``float32 (n, size*size*3)``: box-resized, mean colour subtracted, L2 normalised;
    ``turn``: each put in its canonical orientation (:func:`canonical`)."""
    ramp = np.arange(size, dtype=np.float32)
    mask = ramp[:, None] * size + ramp[None, :] * 1.5
    out = []
    for rgb in images:
        x = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BOX), dtype=np.float32)
        x = x - x.mean(axis=(0, 1))
        if turn:
            x = canonical(x, mask)
        out.append(x.ravel() / (np.linalg.norm(x) + 1e-3))
    return np.stack(out)


def rates(q: np.ndarray, db: np.ndarray) -> tuple[float, float]:
    """(rank-1, in the top 10) of query i finding database item i; ties broken by index."""
    d = hamming_distances(q, db).astype(np.int64)
    order = np.argsort(d * len(db) + np.arange(len(db))[None], axis=1)
    hit = order == np.arange(len(db))[:, None]
    return float(hit[:, 0].mean()), float(hit[:, :10].any(axis=1).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path, help="a bundle with a fine code")
    ap.add_argument("--data", type=Path, required=True, help="the archive folder")
    ap.add_argument("--n", type=int, default=500, help="database images")
    ap.add_argument("--fit", type=int, default=500, help="images the thumbnail PCA is fitted on")
    ap.add_argument("--size", type=int, default=8, help="thumbnail side")
    ap.add_argument("--thumb-bits", default="32,64", help="thumbnail code lengths")
    ap.add_argument("--canonical", action="store_true",
                    help="turn each thumbnail to its canonical orientation (rotation-proof)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    files = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in EXTENSIONS)
    pick = np.random.default_rng(args.seed).permutation(len(files))
    db_files, fit_files = pick[:args.n], pick[args.n:args.n + args.fit]
    db = [np.asarray(Image.open(files[i]).convert("RGB")) for i in db_files]
    fit = [np.asarray(Image.open(files[i]).convert("RGB")) for i in fit_files]
    queries = {"same": db, **{k: [f(x) for x in db] for k, f in CHANGES.items()}}
    enc = Encoder(args.bundle)
    fine = {k: enc.encode_fine(v) for k, v in queries.items()}
    thumbs = {k: thumbnails(v, args.size, args.canonical) for k, v in queries.items()}
    fit_thumbs = thumbnails(fit, args.size, args.canonical)
    codes: dict[str, dict[str, np.ndarray]] = {f"fine {enc.fine_bits}": fine}
    for bits in (int(b) for b in args.thumb_bits.split(",")):
        tc = fit_fine_code(fit_thumbs, FineCodeConfig("pca", bits, l2_normalize=False))
        t = {k: tc.codes(v) for k, v in thumbs.items()}
        codes[f"thumb {bits}"] = t
        codes[f"fine {enc.fine_bits} + thumb {bits}"] = {
            k: np.concatenate([fine[k], t[k]], axis=1) for k in queries}
    rows = {}
    print(f"{args.bundle.name} on {args.data.name}: {args.n} database images; rank-1 "
          f"(rot90: in the top 10)")
    print("| code | bytes | same file | JPEG q70 | 90% crop | brightness x1.1 | rot 90 in top 10 |")
    print("|---|---|---|---|---|---|---|")
    for name, c in codes.items():
        r = {k: rates(c[k], c["same"]) for k in queries}
        rows[name] = {k: {"rank1": v[0], "top10": v[1]} for k, v in r.items()}
        print(f"| {name} | {c['same'].shape[1]} | {r['same'][0]:.3f} | {r['jpeg70'][0]:.3f} | "
              f"{r['crop90'][0]:.3f} | {r['bright110'][0]:.3f} | {r['rot90'][1]:.3f} |")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"bundle": str(args.bundle), "data": str(args.data),
                                         "n": args.n, "fit": args.fit, "size": args.size,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
