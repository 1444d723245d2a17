"""Codes to benchmark search and loading with: uniform noise, class-centred codes, and the codes
of a trained bundle on a real dataset, replicated with the bit flips measured between augmented
views of the same image.

Why three kinds: an approximate index (BIN_IVF_FLAT) pays only on codes with structure, and
trained codes have structure (images of a class share most bits); uniform random codes are the
worst case, class-centred synthetic codes a controllable middle, trained codes the real thing.

``trained``: every image of ``data`` is encoded by ``bundle``; the bundle's ``split.json`` (when
it has one) puts its query images on the query side, the others on the database side, so no
query scene is in the database. The flip rate ``p`` is the mean fraction of bits that differ
between an image's code and the code of its mirrored, 10% brighter view (what a new photograph
of the same scene changes); each replicated code is a base code with each bit flipped with
probability ``p``. Base codes and ``p`` are cached (``cache``) by encoder id.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Codes(NamedTuple):
    """A database and held-out queries of packed codes, and how they were made."""

    db: np.ndarray  # uint8 (n, bits/8)
    queries: np.ndarray  # uint8 (nq, bits/8)
    note: str


def uniform(n: int, nq: int, bits: int = 64, seed: int = 0) -> Codes:
    rng = np.random.default_rng([seed, bits, n])
    c = rng.integers(0, 256, size=(n + nq, bits // 8), dtype=np.uint8)
    return Codes(c[:n], c[n:], "uniform random bits")


def flip(base: np.ndarray, p: float, rng: np.random.Generator, step: int = 200_000) -> np.ndarray:
    """``base`` with each bit flipped with probability ``p`` (in blocks, to bound memory)."""
    out = np.empty_like(base)
    for s in range(0, len(base), step):
        bits = np.unpackbits(base[s : s + step], axis=1)
        bits ^= (rng.random(bits.shape) < p).astype(np.uint8)
        out[s : s + step] = np.packbits(bits, axis=1)
    return out


def clustered(n: int, nq: int, bits: int = 64, seed: int = 0, centres: int = 45,
              p: float = 0.10) -> Codes:
    rng = np.random.default_rng([seed, bits, n, centres])
    c = np.packbits(rng.integers(0, 2, size=(centres, bits), dtype=np.uint8), axis=1)
    base = c[rng.integers(0, centres, n + nq)]
    codes = flip(base, p, rng)
    return Codes(codes[:n], codes[n:], f"{centres} random centres, each bit flipped with p = {p}")


def trained_bases(bundle: Path, data: Path, cache: Path | None) -> tuple[np.ndarray, np.ndarray, float, str]:
    """``(database-side base codes, query-side base codes, flip rate, encoder id)``."""
    from PIL import Image, ImageEnhance, ImageOps

    from rsir_sdk import Bundle, Encoder
    from rsir_sdk.archive import open_archive

    b = Bundle.load(bundle)
    key = cache / f"trained-{b.encoder_id}-{data.name}.npz" if cache else None
    if key is not None and key.exists():
        z = np.load(key)
        return z["db"], z["q"], float(z["p"]), b.encoder_id
    items = open_archive(data, label_from="parent").items
    split = bundle / "split.json"
    query_ids = set(json.loads(split.read_text())["query"]) if split.exists() else set()
    enc = Encoder(b)
    print(f"  encoding {len(items)} images of {data} with {bundle} ...", file=sys.stderr, flush=True)
    codes = enc.encode([str(it.file) for it in items])
    is_q = np.array([it.id in query_ids for it in items])
    if not is_q.any():  # no split: a seeded fifth of the images are queries
        is_q = np.random.default_rng(0).random(len(items)) < 0.2
    views = [ImageEnhance.Brightness(ImageOps.mirror(Image.open(items[i].file).convert("RGB")))
             .enhance(1.1) for i in np.flatnonzero(is_q)]
    aug = enc.encode(views)
    p = float(np.unpackbits(codes[is_q] ^ aug, axis=1).mean())
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        np.savez(key, db=codes[~is_q], q=codes[is_q], p=p)
    return codes[~is_q], codes[is_q], p, b.encoder_id


def trained(n: int, nq: int, bundle: Path, data: Path, cache: Path | None, seed: int = 0) -> Codes:
    dbase, qbase, p, enc_id = trained_bases(bundle, data, cache)
    rng = np.random.default_rng([seed, n])
    db = flip(dbase[rng.integers(0, len(dbase), n)], p, rng)
    q = flip(qbase[rng.integers(0, len(qbase), nq)], p, rng)
    distinct = len({bytes(x) for x in dbase})
    return Codes(db, q, f"{bundle.name} ({enc_id}) codes of {data.name}: {len(dbase)} database "
                        f"images ({distinct} distinct codes) and {len(qbase)} query images, "
                        f"replicated with bit flips at p = {p:.3f} (measured between an image and "
                        f"its mirrored, 10% brighter view)")


def make(kind: str, n: int, nq: int, bits: int, seed: int, bundle: Path | None, data: Path | None,
         cache: Path | None) -> Codes:
    if kind == "uniform":
        return uniform(n, nq, bits, seed)
    if kind == "clustered":
        return clustered(n, nq, bits, seed)
    if kind == "trained":
        if bundle is None or data is None:
            raise SystemExit("--kinds trained needs --bundle and --data (a trained bundle and its dataset)")
        return trained(n, nq, bundle, data, cache, seed)
    raise SystemExit(f"unknown kind {kind!r}: uniform, clustered or trained")


def recall_at_k(exact: np.ndarray, got: np.ndarray) -> float:
    """Tie-aware recall@k from distance lists (any item at the k-th distance is right)."""
    k = exact.shape[1]
    total = 0
    for a, b in zip(exact, got):
        total += int(np.minimum(np.bincount(a, minlength=2049), np.bincount(b, minlength=2049)).sum())
    return total / float(k * len(exact))
