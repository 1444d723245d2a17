"""mAP of int8 encoders next to their fp32 parents on the same split, and the fraction of bits that flip.

Why: an int8 encoder is only worth shipping if retrieval quality holds (target: at most 1 mAP
point lost). For each fp32 bundle the int8 bundle is ``<bundle>-int8`` when it exists and derives
from it, else it is made there with ``rsir_train.quantize`` (calibrated on the split's train part,
checked on its query part). Queries are the bundle's ``split.json`` query images encoded by each
encoder; the database is the learned codes V (AHCL, asymmetric: the same V for both) or, for
symmetric bundles, the train images encoded by each encoder. mAP over the whole database,
Hamming ranking, ties by database index (``rsir_sdk.metrics``).

    python benchmarks/quality.py runs/nwpu12-64 runs/eurosat-64 --data /work/shared/data
    RSIR_DATA=/work/shared/data/nwpu12 python benchmarks/quality.py runs/nwpu12-64

``--data`` is the archive folder itself or a folder holding it under the manifest's dataset name;
default: the archive the bundle records. The split is read with ``Bundle.split()`` and the
archive listed with ``rsir_sdk.archive`` (labels from the class folders), as everywhere else.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from _common import load_average, machine, section, table, versions, write_section

from rsir_sdk import Bundle, Encoder
from rsir_sdk.archive import open_archive
from rsir_sdk.metrics import mean_average_precision, precision_at_k
from rsir_train.quantize import QuantizeOptions, quantize_bundle


def archive_root(bundle: Bundle, data: list[Path], first_id: str) -> Path:
    """The folder that holds the split's images: one of ``data`` or ``data/<dataset>``, else the
    archive the bundle records."""
    dataset = bundle.manifest.get("training", {}).get("dataset", "")
    recorded = [Path(bundle.archive_root)] if bundle.archive_root else []
    for d in data + recorded:
        for cand in (d, d / dataset):
            if (cand / first_id).is_file():
                return cand
    raise SystemExit(f"none of {[str(d) for d in data]} holds {first_id} (dataset {dataset!r}) "
                     f"of {bundle.path}: give --data the archive folder")


def int8_for(fp32: Bundle, root: Path, suffix: str, method: str, log) -> tuple[Bundle, str]:
    """The int8 bundle of ``fp32``: the existing sibling, or a new one made here."""
    path = Path(str(fp32.path).rstrip("/") + suffix)
    if (path / "manifest.json").is_file():
        b = Bundle.load(path)
        if (b.manifest.get("parent") or {}).get("model_sha256") == fp32.model_sha256:
            return b, "existing"
        raise SystemExit(f"{path} exists but is not derived from {fp32.path}: move it away")
    log(f"quantizing {fp32.path} -> {path} ...")
    quantize_bundle(fp32, root, path, QuantizeOptions(method=method, min_agreement=0.0))
    return Bundle.load(path), "made by this run"


def evaluate(fp32: Bundle, int8: Bundle, root: Path, threads: int | None) -> dict:
    split = fp32.split()
    listing = open_archive(root, label_from="top")
    split.indices(listing)  # SplitError when the split's images are not all in this archive
    by_id = listing.by_id()
    q_ids, t_ids = split.query_ids, split.train_ids
    q_labels = [by_id[i].label for i in q_ids]
    encs = {k: Encoder(b, providers=["CPUExecutionProvider"], threads=threads, batch_size=32)
            for k, b in (("fp32", fp32), ("int8", int8))}
    q_paths = [by_id[i].file for i in q_ids]
    q = {}
    secs = {}
    for k, e in encs.items():
        t0 = time.perf_counter()
        q[k] = e.encode(q_paths)
        secs[k] = time.perf_counter() - t0
    flips_q = np.unpackbits(q["fp32"], axis=1) != np.unpackbits(q["int8"], axis=1)
    out = {"n_query": len(q_ids), "bits_flipped": float(flips_q.mean()),
           "codes_changed": float(flips_q.any(axis=1).mean()),
           "encode_s": secs}
    if fp32.has_database:
        db = fp32.load_database()
        db8 = int8.load_database()
        assert np.array_equal(db.codes, db8.codes), "int8 bundle must ship the parent's learned codes"
        labels = db.labels if all(db.labels) else [by_id[i].label for i in db.ids]
        out["database"] = f"learned V ({len(db)})"
        out["map_fp32"] = mean_average_precision(q["fp32"], q_labels, db.codes, labels)
        out["map_int8"] = mean_average_precision(q["int8"], q_labels, db.codes, labels)
        out["p10_fp32"] = precision_at_k(q["fp32"], q_labels, db.codes, labels, 10)
        out["p10_int8"] = precision_at_k(q["int8"], q_labels, db.codes, labels, 10)
    else:
        t_paths = [by_id[i].file for i in t_ids]
        t_labels = [by_id[i].label for i in t_ids]
        d32, d8 = encs["fp32"].encode(t_paths), encs["int8"].encode(t_paths)
        out["database"] = f"encoded train ({len(t_ids)})"
        out["map_fp32"] = mean_average_precision(q["fp32"], q_labels, d32, t_labels)
        out["map_int8"] = mean_average_precision(q["int8"], q_labels, d8, t_labels)
        out["map_mixed"] = mean_average_precision(q["int8"], q_labels, d32, t_labels)
        out["p10_fp32"] = precision_at_k(q["fp32"], q_labels, d32, t_labels, 10)
        out["p10_int8"] = precision_at_k(q["int8"], q_labels, d8, t_labels, 10)
        flips_d = np.unpackbits(d32, axis=1) != np.unpackbits(d8, axis=1)
        out["bits_flipped_db"] = float(flips_d.mean())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundles", nargs="+", help="fp32 bundles (with split.json)")
    p.add_argument("--data", nargs="+", default=[os.environ.get("RSIR_DATA")] if os.environ.get("RSIR_DATA") else None,
                   help="archive folder(s), or folder(s) holding them by dataset name; default "
                        "$RSIR_DATA, else the archive each bundle records")
    p.add_argument("--int8-suffix", default="-int8", help="int8 bundle = <bundle><suffix>")
    p.add_argument("--method", default="minmax", help="calibration method when quantizing here")
    p.add_argument("--threads", type=int, help="onnxruntime threads (default: all)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    data = [Path(d) for d in args.data or []]
    load0 = load_average()
    rows, details = [], []

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    for path in args.bundles:
        fp32 = Bundle.load(path)
        if fp32.manifest.get("parent"):
            raise SystemExit(f"{path} is a derived bundle: give its fp32 parent")
        root = archive_root(fp32, data, fp32.split().query_ids[0])
        int8, origin = int8_for(fp32, root, args.int8_suffix, args.method, log)
        log(f"evaluating {fp32.path} ...")
        r = evaluate(fp32, int8, root, args.threads)
        rec = int8.manifest["parent"]
        training = fp32.manifest.get("training", {})
        delta = 100 * (r["map_int8"] - r["map_fp32"])
        rows.append([
            training.get("dataset", root.name), fp32.bits, training.get("backbone", "?"),
            r["database"], r["n_query"], f"{r['map_fp32']:.4f}", f"{r['map_int8']:.4f}",
            f"{delta:+.2f}", f"{r['p10_fp32']:.3f} / {r['p10_int8']:.3f}",
            f"{100 * r['bits_flipped']:.2f}%", f"{100 * r['codes_changed']:.1f}%",
            f"{100 * rec['bit_agreement']:.2f}%",
            f"{rec['calibration']['count']} ({rec['calibration']['reader']}, "
            f"{rec['quantization']['calibration_method']})",
            len(rec["quantization"].get("kept_float32", {}).get("leading_layers", [])),
            "yes" if delta >= -1.0 else "NO",
        ])
        train_map = training.get("metrics", {}).get("map_query_vs_learned_db")
        details.append(f"- `{fp32.path}` (encoder {fp32.encoder_id}, training mAP "
                       f"{'n/a' if train_map is None else f'{train_map:.4f}'}) → "
                       f"`{int8.path}` (encoder {int8.encoder_id}, {origin})"
                       + (f"; int8 queries against the fp32-encoded database: mAP "
                          f"{r['map_mixed']:.4f}" if "map_mixed" in r else ""))
        log(table(HEAD, rows[-1:]))
    body = table(HEAD, rows)
    body += ("\n\nΔ = int8 − fp32 mAP in points (acceptance: ≥ −1). Bits flipped / codes changed: "
             "query images, int8 vs fp32 codes. Agreement: measured by `rsir quantize` on its "
             "held-out check images and recorded in the int8 manifest. Leading layers kept fp32: "
             "how many of the first weighted layers `rsir quantize` kept in float to reach its "
             "target agreement (0.99; the hash layer is always float). mAP over the whole "
             "database, Hamming ranking, ties by database index; P@10 fp32 / int8.\n\n"
             + "\n".join(details) + "\n")
    print(body)
    meta = machine({"versions": versions("onnxruntime", "numpy")})
    if not args.no_write:
        write_section("quality", section("quality", "Quality: int8 vs fp32 encoders "
                                         "(`benchmarks/quality.py`)", body, meta,
                                         (load0, load_average())))
    return 0


HEAD = ["dataset", "bits", "backbone", "database", "queries", "mAP fp32", "mAP int8", "Δ points",
        "P@10 fp32 / int8", "bits flipped", "codes changed", "agreement (manifest)",
        "calibration images", "leading layers kept fp32", "≤ 1 point lost"]

if __name__ == "__main__":
    sys.exit(main())
