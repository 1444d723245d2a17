"""Which descriptor should the fine code be the sign bits of? Measured per archive (issue 20).

Why: the fine code (PCA/ITQ sign bits of the backbone's global-average-pooled features) meets
every changed-copy bar on nwpu12 but not on eurosat, where float cosine of the pooled features
itself puts a JPEG q70 copy first only 0.768 of the time (``docs/similar.md``). This measures
descriptors that the same ONNX graph could compute from the same uint8 input in the same forward
pass (functions of the input pixels and of the backbone's intermediate activations), to find one
that holds on every archive:

- ``avg``: global average pool of the last map (today's fine code input; the baseline);
- ``gem3`` / ``max``: GeM (p = 3) and max pooling of the last map;
- ``ms``: multi-scale, L2-normalised average pools of intermediate stage outputs and the last
  map, concatenated (``ms3``: blocks 11 and 15 + last; ``ms5``: blocks 5, 8, 11, 15, 16 + last);
- ``grid``: the last map average-pooled to 2 x 2 cells (4 x 1280);
- ``tN``: a colour thumbnail of the graph's uint8 input (the prepared 224 x 224 image)
  box-averaged to N x N, its mean over all pixels and channels subtracted (``tNc``: each
  channel's mean) and L2 normalised: JPEG keeps each block's mean, and a brightness factor is
  removed by the mean subtraction and the normalisation. ``tNr``: the same, averaged over its
  four 90-degree rotations (rotation invariant);
- ``A+w*B``: concatenations of L2-normalised parts, part B weighted by w (cosine of the
  concatenation = (cos A + w^2 cos B) / (1 + w^2)), coded by one PCA/ITQ fit;
- ``A | B``: split codes (:data:`SPLIT_CODES`): each part its own PCA-sign code, the bits
  concatenated into one code (one Hamming distance), e.g. ``t8 | t16r`` = 64 bits of the plain
  8 x 8 thumbnail (sharp on JPEG, crop, brightness) + 64 bits of the rotation-symmetrised 16 x 16
  one (exactly invariant to a 90-degree turn of a square input); in a graph, one ``Linear``
  with a block-diagonal weight over the concatenated, per-part normalised descriptor.

The backbone is the frozen ImageNet EfficientNet-Lite0 with the ITQ/MiLAN preprocessing (the
scene resized straight to 224 x 224, ``(x/255 - mean)/std``: ``ITQConfig().resolved_preprocess``),
as ``export/scripts/fine_code_length.py`` uses. From the archive (class folders), ``--n`` database
images and ``--fit`` disjoint fit images are drawn with ``--seed`` (``--split FILE``: the
database from the split's held-out side, as ``docs/similar.md`` measured, the fit images from
its train side). Each database image is queried
as the same file, JPEG q70, 90% centre crop resized back, brightness x1.1 (rank-1: the original
is first) and rotated 90 degrees (top-10), the changes of ``benchmarks/similar.py``. Ranked by
float cosine and by K-bit sign codes (``rsir_train.fine_code``: ``pca`` and ``itq``, fitted on
the fit images' descriptors, no labels; Hamming distance). Ties count in expectation over their
order. ``overlap10``: of each database image's 10 nearest others by float cosine of ``avg`` (the
neighbourhood today's fine code orders ties by), how many the row's top 10 holds. Features are
cached in ``--cache`` (an .npz), so a second run only re-ranks (``--only``: a subset of rows).

    nice -n 15 python export/scripts/fine_descriptors.py --data ../shared/data/eurosat \\
        --n 500 --seed 0 --json /tmp/fd/eurosat.json --cache /tmp/fd/eurosat-feats.npz
    nice -n 15 python export/scripts/fine_descriptors.py --data ../shared/data/eurosat \\
        --split runs/splits/eurosat-80-20-seed0.json --kind pca --only "avg;t8 | t16r" ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy: this shares a busy machine

import numpy as np  # noqa: E402 (after the thread settings)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fine_code_length import CHANGES, expected_in_topk, overlap_at_10  # noqa: E402 (same changes as similar.py)

from rsir_sdk.archive import open_archive  # noqa: E402
from rsir_sdk.codes import hamming_distances  # noqa: E402
from rsir_sdk.images import load_image  # noqa: E402
from rsir_sdk.preprocess import prepare  # noqa: E402
from rsir_train.backbones import build_backbone  # noqa: E402
from rsir_train.features import Normalize  # noqa: E402
from rsir_train.fine_code import FineCodeConfig, fit_fine_code  # noqa: E402
from rsir_train.itq import ITQConfig  # noqa: E402

VARIANTS = ("same",) + tuple(CHANGES)  # same, jpeg70, crop90, bright110, rot90
#: stages (0 = stem, i = block i) whose output is average-pooled: the ends of Lite0's stages 3-7
TAPS = (5, 8, 11, 15, 16)
THUMB = 16  # the stored thumbnail; coarser ones are its box averages


@torch.no_grad()
def raw_features(net, normalize: Normalize, images: np.ndarray) -> dict[str, np.ndarray]:
    """Everything the descriptors are made of, for prepared uint8 ``(n, 224, 224, 3)`` images."""
    x = normalize(torch.from_numpy(images))
    out: dict[str, torch.Tensor] = {}
    for i in range(net.num_blocks + 1):
        x = net.stage(i)(x)
        if i in TAPS:
            out[f"tap{i}"] = x.mean(dim=(2, 3))
        if i == 11:
            out["grid11"] = F.adaptive_avg_pool2d(x, 2).flatten(1)
    h = F.relu6(net._bn1(net._conv_head(x)))  # the last map, (n, 1280, 7, 7)
    out["avg"] = h.mean(dim=(2, 3))
    out["gem3"] = h.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
    out["max"] = h.amax(dim=(2, 3))
    out["grid"] = F.adaptive_avg_pool2d(h, 2).flatten(1)  # 2x2 cells of 4x4 (overlapping by one)
    u8 = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    out["thumb"] = F.adaptive_avg_pool2d(u8, THUMB).flatten(1)  # (n, 3*16*16), 14x14 boxes
    return {k: v.numpy().astype(np.float32) for k, v in out.items()}


def compute(files: list[Path], n_db: int, batch: int) -> dict[str, np.ndarray]:
    """Raw features ``(len(VARIANTS), n_db, d)`` of the database images and their changes and
    ``(n_fit, d)`` of the fit images (``files[n_db:]``), keyed ``db/<name>`` / ``fit/<name>``."""
    net = build_backbone("efficientnet_lite0").eval().requires_grad_(False)
    pre = ITQConfig().resolved_preprocess(net)
    normalize = Normalize(pre["mean"], pre["std"])
    db: dict[str, list] = {}
    fit: dict[str, list] = {}
    t0 = time.perf_counter()
    for s in range(0, len(files), batch):
        chunk = files[s:s + batch]
        rgbs = [load_image(f) for f in chunk]
        ims, where = [], []
        for j, rgb in enumerate(rgbs):
            if s + j < n_db:
                for v in VARIANTS:
                    ims.append(prepare(rgb if v == "same" else CHANGES[v](rgb), pre))
                    where.append(("db", v))
            else:
                ims.append(prepare(rgb, pre))
                where.append(("fit", None))
        feats = raw_features(net, normalize, np.stack(ims))
        for r, (side, v) in enumerate(where):
            for k, a in feats.items():
                (db if side == "db" else fit).setdefault((k, v), []).append(a[r])
        done = s + len(chunk)
        print(f"  {done}/{len(files)} images, {time.perf_counter() - t0:.0f} s", file=sys.stderr,
              flush=True)
    out = {}
    for k in {k for k, _ in db}:
        out[f"db/{k}"] = np.stack([np.stack(db[(k, v)]) for v in VARIANTS])
    for (k, _), rows in fit.items():
        out[f"fit/{k}"] = np.stack(rows)
    return out


# ------------------------------------------------------------------ descriptors
def l2(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def thumb(raw: np.ndarray, size: int, per_channel: bool = False, rot_sym: bool = False) -> np.ndarray:
    """Thumbnails ``(..., 3*size*size)`` from the stored 16 x 16 ones: box average to ``size``,
    mean subtracted (over everything, or per channel), optionally averaged over the four
    90-degree rotations, L2 normalised (eps 1: a flat scene stays near 0, not amplified noise)."""
    t = raw.astype(np.float64).reshape(raw.shape[:-1] + (3, THUMB, THUMB))
    f = THUMB // size
    t = t.reshape(t.shape[:-2] + (size, f, size, f)).mean(axis=(-3, -1))
    axes = (-2, -1) if per_channel else (-3, -2, -1)
    t = t - t.mean(axis=axes, keepdims=True)
    if rot_sym:
        t = sum(np.rot90(t, r, axes=(-2, -1)) for r in range(4)) / 4
    t = t.reshape(t.shape[:-3] + (-1,))
    return t / (np.linalg.norm(t, axis=-1, keepdims=True) + 1.0)


def cat(*parts: tuple[float, np.ndarray]) -> np.ndarray:
    """Concatenation of the L2-normalised parts, each times its weight."""
    return np.concatenate([w * l2(p) for w, p in parts], axis=-1)


def descriptors(f: Callable[[str], np.ndarray]) -> dict[str, np.ndarray]:
    """Every measured descriptor from the raw features ``f(name)`` (any leading shape)."""
    ms3 = cat((1, f("tap11")), (1, f("tap15")), (1, f("avg")))
    ms5 = cat(*[(1, f(f"tap{i}")) for i in TAPS], (1, f("avg")))
    t8, t4 = thumb(f("thumb"), 8), thumb(f("thumb"), 4)
    t8r = thumb(f("thumb"), 8, rot_sym=True)
    d = {
        "avg": f("avg"), "gem3": f("gem3"), "max": f("max"), "ms3": ms3, "ms5": ms5,
        "grid": f("grid"), "avg+grid11": cat((1, f("avg")), (0.7, f("grid11"))),
        "t4": t4, "t8": t8, "t8c": thumb(f("thumb"), 8, per_channel=True),
        "t16": thumb(f("thumb"), 16), "t8r": t8r,
    }
    for w in (0.5, 0.7, 1.0):
        d[f"avg+{w}*t8"] = cat((1, f("avg")), (w, t8))
    d["avg+0.7*t4"] = cat((1, f("avg")), (0.7, t4))
    d["avg+0.7*t16"] = cat((1, f("avg")), (0.7, thumb(f("thumb"), 16)))
    d["avg+1.0*t8r"] = cat((1, f("avg")), (1.0, t8r))
    d["ms3+0.7*t8"] = cat((1, l2(ms3)), (0.7, t8))
    d["ms5+0.7*t8"] = cat((1, l2(ms5)), (0.7, t8))
    d["avg+0.5*t8+0.5*t8r"] = cat((1, f("avg")), (0.5, t8), (0.5, t8r))
    # thumbnail-led, rotation-invariant mixes
    t16r = thumb(f("thumb"), 16, rot_sym=True)
    d["t16r"] = t16r
    d["t8r+t16r"] = cat((1, t8r), (1, t16r))
    for w in (1.5, 2.0, 3.0):
        d[f"avg+{w}*t8r"] = cat((1, f("avg")), (w, t8r))
    for w in (1.0, 1.5, 2.0, 3.0):
        d[f"avg+{w}*t16r"] = cat((1, f("avg")), (w, t16r))
    d["ms3+2.0*t16r"] = cat((1, l2(ms3)), (2.0, t16r))
    d["max+2.0*t16r"] = cat((1, f("max")), (2.0, t16r))
    d["avg+1.5*t8r+1.5*t16r"] = cat((1, f("avg")), (1.5, t8r), (1.5, t16r))
    return d


# ------------------------------------------------------------------ ranking
def figures(q_dist: dict[str, np.ndarray], ref: np.ndarray) -> dict[str, float]:
    """Rank-1 of each change, rot90 in the top 10, and overlap@10: of each database image's 10
    nearest others by ``ref`` (float cosine distance of ``avg``: what today's fine code keeps),
    how many this ranking's top 10 holds (the neighbourhood a fine code orders ties by)."""
    idx = np.arange(len(q_dist["same"]))
    out = {v: float(expected_in_topk(q_dist[v], idx, 1).mean()) for v in VARIANTS}
    out["rot90_top10"] = float(expected_in_topk(q_dist["rot90"], idx, 10).mean())
    out["overlap10"] = overlap_at_10(q_dist["same"], ref)
    return out


def measure(name: str, db: np.ndarray, fit: np.ndarray, bits: list[int],
            kinds: list[str], ref: np.ndarray) -> list[dict]:
    """Rows (float cosine, then each kind x bits) for one descriptor: ``db (5, n, d)``."""
    rows = []
    dbn = l2(db.astype(np.float64))
    q = {v: -(dbn[i] @ dbn[0].T) for i, v in enumerate(VARIANTS)}
    rows.append({"descriptor": name, "dim": db.shape[-1], "code": "float", **figures(q, ref)})
    for kind in kinds:
        for b in bits:
            c = fit_codes(db, fit, kind, b)
            if c is None:
                continue
            q = {v: hamming_distances(c[i], c[0]) for i, v in enumerate(VARIANTS)}
            rows.append({"descriptor": name, "dim": db.shape[-1], "code": f"{kind} {b}",
                         **figures(q, ref)})
    return rows


def fit_codes(db: np.ndarray, fit: np.ndarray, kind: str, bits: int) -> np.ndarray | None:
    """Packed codes ``(5, n, bits/8)`` of ``db (5, n, d)``, fitted on ``fit``; None when the fit
    descriptors vary in fewer than ``bits`` directions (PCA / ITQ)."""
    dbn, fn = l2(db.astype(np.float64)), l2(fit.astype(np.float64))
    mean = fn.mean(axis=0)
    # the fit's PCA lies in the span of the centred fit descriptors: fit there (the same codes
    # as fit_fine_code on the full vectors, without a D x D eigenproblem)
    _, sv, vt = np.linalg.svd(fn - mean, full_matrices=False)
    # directions with variance (eigenvalue > 1e-6 of the largest, as fine_code._usable_bits)
    basis = vt[sv > 1e-3 * sv[0]].T  # (D, r)
    if kind == "lsh":  # random projections need the full space, not the fit's span
        basis = np.eye(db.shape[-1])
    elif bits > basis.shape[1]:
        return None
    code = fit_fine_code((fn - mean) @ basis, FineCodeConfig(kind=kind, bits=bits,
                                                              l2_normalize=False))
    return np.stack([code.codes((dbn[i] - mean) @ basis) for i in range(len(db))])


def measure_split(name: str, parts: list[tuple[np.ndarray, np.ndarray, int]], ref: np.ndarray,
                  kind: str = "pca") -> dict | None:
    """One row for a code made of separately fitted parts ``(db, fit, bits)``, concatenated
    (one Hamming distance over all parts)."""
    codes = [fit_codes(db, fit, kind, b) for db, fit, b in parts]
    if any(c is None for c in codes):
        return None
    c = np.concatenate(codes, axis=-1)
    q = {v: hamming_distances(c[i], c[0]) for i, v in enumerate(VARIANTS)}
    return {"descriptor": name, "dim": sum(p[0].shape[-1] for p in parts),
            "code": f"{kind} " + "+".join(str(p[2]) for p in parts), **figures(q, ref)}


SPLIT_CODES = {  # name: [(descriptor, bits), ...], each part its own PCA code
    "avg | t8": [("avg", 64), ("t8", 64)],
    "avg | t8 (256)": [("avg", 128), ("t8", 128)],
    "avg | t16r": [("avg", 64), ("t16r", 64)],
    "avg | t16r (256)": [("avg", 128), ("t16r", 128)],
    "t8 | t8r": [("t8", 96), ("t8r", 32)],
    "t16 | t16r (256)": [("t16", 128), ("t16r", 128)],
    "t16 | t16r": [("t16", 64), ("t16r", 64)],
    "t8 | t16r": [("t8", 64), ("t16r", 64)],
    "t8 | t16r (256)": [("t8", 128), ("t16r", 128)],
    "t8 | t8r (256)": [("t8", 128), ("t8r", 40)],
    "avg | t8 | t16r (256)": [("avg", 64), ("t8", 64), ("t16r", 128)],
    "avg | t16 | t16r (256)": [("avg", 64), ("t16", 64), ("t16r", 128)],
    "avg128 | t8 | t16r (256)": [("avg", 128), ("t8", 64), ("t16r", 64)],
}


BARS = {"jpeg70": 0.95, "crop90": 0.95, "bright110": 0.95, "rot90_top10": 0.90}


def print_table(title: str, rows: list[dict]) -> None:
    cols = ["same", "jpeg70", "crop90", "bright110", "rot90", "rot90_top10", "overlap10"]
    print(f"\n### {title}\n")
    print("| descriptor | dim | code | " + " | ".join(cols) + " | bars |")
    print("|---|---|---|" + "---|" * (len(cols) + 1))
    for r in rows:
        ok = all(r[c] >= b for c, b in BARS.items())
        print(f"| {r['descriptor']} | {r['dim']} | {r['code']} | "
              + " | ".join(f"{r[c]:.2f}" if c == "overlap10" else f"{r[c]:.3f}" for c in cols) + f" | {'all' if ok else ''} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="archive folder (class folders)")
    p.add_argument("--n", type=int, default=500, help="database images")
    p.add_argument("--fit", type=int, default=500, help="fit images (disjoint from the database)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bits", type=lambda s: [int(b) for b in s.split(",")], default=[128, 256])
    p.add_argument("--kind", type=lambda s: s.split(","), default=["pca", "itq"])
    p.add_argument("--only", type=lambda s: s.split(";"), default=None,
                   help="measure only these descriptors and split codes (names separated by ';')")
    p.add_argument("--split", type=Path, default=None,
                   help="a split file (runs/splits/*.json): database = its query side, fit = a "
                        "draw from its train side")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=None, help=".npz of the raw features")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    items = sorted(open_archive(args.data, label_from="top").items, key=lambda it: it.id)
    rng = np.random.default_rng(args.seed)
    if args.split:  # database: the split's held-out side (as docs/similar.md); fit: its train side
        split = json.loads(args.split.read_text())
        pos = {it.id: i for i, it in enumerate(items)}
        query = [pos[i] for i in split["query"]]
        train = [pos[i] for i in split["train"]]
        pick = np.concatenate([np.sort(rng.permutation(query)[:args.n]),
                               rng.permutation(train)[:args.fit]])
    else:
        pick = rng.permutation(len(items))[:args.n + args.fit]
    files = [items[int(i)].file for i in pick]
    ids = [items[int(i)].id for i in pick]
    if args.cache and args.cache.is_file():
        raw = dict(np.load(args.cache))
        if list(raw.pop("ids")) != ids:
            raise SystemExit(f"{args.cache} holds other images: remove it")
    else:
        raw = compute(files, args.n, args.batch)
        if args.cache:
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.cache, ids=np.array(ids), **raw)
    t_feat = time.perf_counter() - t0
    db = descriptors(lambda k: raw[f"db/{k}"])
    fit = descriptors(lambda k: raw[f"fit/{k}"])
    a = l2(db["avg"][0].astype(np.float64))
    ref = -(a @ a.T)
    rows = []
    for name in db:
        if args.only and name not in args.only:
            continue
        rows += measure(name, db[name], fit[name], args.bits, args.kind, ref)
    for name, spec in SPLIT_CODES.items():
        if args.only and name not in args.only:
            continue
        row = measure_split(name, [(db[d], fit[d], b) for d, b in spec], ref)
        rows += [row] if row else []
    title = (f"{args.data.name}: {args.n} database images, {args.fit} fit images, seed "
             f"{args.seed}" + (f", split {args.split.name}" if args.split else ""))
    print_table(title, rows)
    t_all = time.perf_counter() - t0
    print(f"\nfeatures {t_feat:.0f} s, total {t_all:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "archive": str(args.data),
                                         "n": args.n, "fit": args.fit, "seed": args.seed,
                                         "split": str(args.split) if args.split else None,
                                         "seconds_features": round(t_feat, 1),
                                         "seconds": round(t_all, 1), "rows": rows}, indent=1))
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
