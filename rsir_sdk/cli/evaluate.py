"""``rsir eval``: a bundle's query split searched through Milvus, next to the exact reference."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..evaluate import EvalOptions, describe, evaluate_codes, evaluation_codes
from .common import (
    EXIT_OK,
    EXIT_PARTIAL,
    POSITIVE,
    ProgressBar,
    UsageError,
    add_raster_args,
    collection_name,
    print_json,
    raster_rule,
    warn,
)


def add_parser(sub: Any) -> None:
    """Register ``rsir eval``."""
    p = sub.add_parser(
        "eval", help="mAP of a bundle's query split searched through Milvus",
        description="Put the bundle's database codes into a Milvus collection (a temporary "
                    "Milvus Lite file unless --uri is given), encode the query split of its "
                    "split.json, search, and report mAP / mAP@k / P@k next to the in-memory "
                    "reference.",
    )
    p.add_argument("bundle")
    p.add_argument("--data", default=os.environ.get("RSIR_DATA"),
                   help="the archive the split belongs to (default: recorded in the bundle, or $RSIR_DATA)")
    p.add_argument("--uri", default=None, help="Milvus URI (default: a temporary Milvus Lite file)")
    p.add_argument("--token", default=os.environ.get("MILVUS_TOKEN"))
    p.add_argument("--collection", default=None, type=collection_name, help="collection (default eval_<method>_<bits>_<id>)")
    p.add_argument("--ks", default="10,20,100", help="k of mAP@k and P@k (default 10,20,100)")
    p.add_argument("--database", choices=["auto", "train", "query"], default="auto",
                   help="train split as database (AHCL) or query split leave-one-out (MiLAN); "
                        "default: by the bundle's protocol")
    p.add_argument("--workers", type=POSITIVE, default=None)
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--plot", metavar="OUT.png",
                   help="also draw the precision-recall curve and the per-class AP to this file "
                        "(needs matplotlib: pip install 'rsir-sdk[plot]')")
    add_raster_args(p)
    p.set_defaults(func=run)


def _ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise UsageError(f"--ks must be comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise UsageError(f"--ks must be positive integers, got {text!r}")
    return ks


def run(args: argparse.Namespace) -> int:
    """Evaluate and print; exit 3 when images had to be left out. The codes are made once
    (:func:`~rsir_sdk.evaluate.evaluation_codes`): the search and the plot both use them."""
    ks = _ks(args.ks)
    bars: dict[str, ProgressBar] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if args.no_progress:
            return
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = ProgressBar(stage, unit="query" if stage == "search" else "img")
        bars[stage].update(done, total)

    options = EvalOptions(database=args.database, rule=raster_rule(args), workers=args.workers,
                          batch_size=args.batch_size)
    try:
        codes = evaluation_codes(args.bundle, args.data, options, progress=progress)
        result = evaluate_codes(codes, ks=ks, uri=args.uri, collection=args.collection,
                                token=args.token, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    if args.json:
        print_json(result.as_dict())
    else:
        print(describe(result))
        for f in result.failed[:10]:
            warn(f"  left out {f.path}: {f.reason}")
    if args.plot:
        from ..plots import curves_of, plot_curves

        curves = curves_of(codes)
        path = plot_curves([curves], args.plot, title=f"{curves.label} ({result.protocol})")
        warn(f"wrote {path}")
    return EXIT_PARTIAL if result.failed else EXIT_OK
