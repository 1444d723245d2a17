"""Command line of the training side: ``python -m export train ahcl --data DIR --bits 64 --out B``.

``rsir train ...`` forwards here. The CLI is the only place that prints.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from typing import Any

from .data import PROTOCOLS, DataError

log = logging.getLogger("export.cli")

AUTO = "auto"


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``train ahcl ...``, ``train milan ...``)."""
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a hashing model and write a bundle")
    methods = train.add_subparsers(dest="method", required=True)
    a = methods.add_parser("ahcl", help="AHCL: asymmetric hashing with learned database codes")
    a.add_argument("--data", default=os.environ.get("RSIR_DATA"),
                   help="archive: folder with one sub-folder per class, or a CSV manifest "
                        "(path,label,...); default $RSIR_DATA")
    a.add_argument("--bits", type=int, default=64)
    a.add_argument("--out", required=True, help="bundle folder to write")
    a.add_argument("--split-file", help="split JSON: read if it exists, else drawn and written")
    a.add_argument("--protocol", default="80-20", choices=sorted(PROTOCOLS))
    a.add_argument("--backbone", default="efficientnet_lite0",
                   choices=["efficientnet_lite0", "resnet18", "small_cnn"])
    a.add_argument("--weights", help="local weights file (resnet18: a torchvision state dict; "
                                     "default: the torch hub cache); nothing is downloaded")
    a.add_argument("--no-pretrained", action="store_true", help="random init (tests only)")
    a.add_argument("--outer", type=int, default=30, help="outer iterations (V updates)")
    a.add_argument("--inner", type=int, default=2, help="network epochs per outer iteration")
    a.add_argument("--epochs", type=int,
                   help="total network epochs; sets --outer to ceil(epochs / inner)")
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--momentum", type=float, default=0.0)
    a.add_argument("--weight-decay", type=float, default=5e-4)
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--lr-steps", type=_int_list,
                   help="outer iterations where lr is divided by 10 (default 10,20 for 30 outer "
                        "iterations, scaled proportionally otherwise)")
    a.add_argument("--lambda", dest="lam", type=float, default=200.0, help="quantization weight")
    a.add_argument("--gamma", type=float, default=20.0, help="classification weight")
    a.add_argument("--num-samples", type=int, default=2000,
                   help="database items sampled per outer iteration (0 = all)")
    a.add_argument("--freeze-blocks", default=AUTO,
                   help="freeze stem + first N blocks and cache their output; 'auto' = 11 "
                        "for efficientnet_lite0 (6 for resnet18) on CPU, 0 (full fine-tune) "
                        "otherwise")
    a.add_argument("--resize", type=int, help="shorter side before the crop (default per backbone)")
    a.add_argument("--crop", type=int, help="square centre crop size (default per backbone)")
    a.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when present)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--eval-every", type=int, default=0,
                   help="log mAP on the query split every N outer iterations (0 = only at the end)")
    a.add_argument("--cache-dir", help="frozen-feature cache (default $RSIR_CACHE or ~/.cache/rsir-sdk)")
    a.add_argument("--no-cache", action="store_true", help="do not cache frozen features on disk")
    a.add_argument("--work-dir", help="checkpoint folder (default <out>.work)")
    a.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    a.add_argument("--skip-corrupt", action="store_true",
                   help="leave out unreadable images (reported) instead of stopping")
    a.add_argument("-q", "--quiet", action="store_true")
    from .milan_pipeline import add_milan_parser

    add_milan_parser(methods)
    return p


def config_from_args(args: argparse.Namespace) -> Any:
    """Turn parsed arguments into an :class:`~export.train.AHCLConfig`."""
    from .backbones import build_backbone, default_device
    from .train import AHCLConfig

    outer = args.outer
    if args.epochs:
        outer = max(1, -(-args.epochs // args.inner))
    steps = args.lr_steps
    if steps is None:
        steps = tuple(max(1, round(s * outer / 30)) for s in (10, 20)) if outer != 30 else (10, 20)
    device = args.device or default_device()
    if args.freeze_blocks == AUTO:
        cpu_default = {"efficientnet_lite0": 11, "resnet18": 6}
        freeze = cpu_default.get(args.backbone, 0) if device == "cpu" else 0
    else:
        freeze = int(args.freeze_blocks)
    pre: dict[str, Any] = {}
    if args.resize is not None:
        pre["resize"] = args.resize if args.resize > 0 else None
    if args.crop is not None:
        pre["crop"] = [args.crop, args.crop]
    # the backbone name is checked here so a typo fails before any data is read
    build_backbone(args.backbone, pretrained=False)
    return AHCLConfig(
        bits=args.bits, backbone=args.backbone, pretrained=not args.no_pretrained,
        weights=args.weights, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, batch_size=args.batch_size,
        outer=outer, inner=args.inner, lr_steps=tuple(steps), lam=args.lam, gamma=args.gamma,
        num_samples=args.num_samples or None, freeze_blocks=freeze, preprocess=pre or None,
        seed=args.seed, device=device, eval_every=args.eval_every,
        cache_dir=False if args.no_cache else args.cache_dir,
    )


def _printer(quiet: bool):
    def show(event: dict[str, Any]) -> None:
        if quiet:
            return
        kind = event.get("event")
        if kind == "outer":
            extra = f" mAP(query)={event['map_query']:.4f}" if "map_query" in event else ""
            print(
                f"outer {event['outer']}: loss={event['loss']:.4f} (pair {event['pairwise']:.4f}, "
                f"quant {event['quantization']:.4f}, ce {event['classification']:.4f}) "
                f"lr={event['lr']:.2g} {event['seconds']:.1f}s{extra}",
                flush=True,
            )
        elif kind == "cache_progress" and (event["done"] == event["total"] or event["done"] % 512 < 64):
            print(f"frozen features {event['done']}/{event['total']}", flush=True)
        elif kind in ("cache_hit", "resumed"):
            print(f"{kind}: {event}", flush=True)
    return show


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.method == "milan":
        from .milan_pipeline import run_milan

        if argv is not None:
            args._argv = list(argv)  # record the caller's command, not this process's sys.argv
        return run_milan(args)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.data:
        print("error: --data (or $RSIR_DATA) is required", file=sys.stderr)
        return 2
    from .backbones import BackboneError
    from .pipeline import train_ahcl_bundle
    from .train import TrainingError

    try:
        config = config_from_args(args)
        command = "python -m export " + shlex.join(sys.argv[1:] if argv is None else argv)
        t0 = time.perf_counter()
        result, manifest = train_ahcl_bundle(
            args.data, args.out, config, split_file=args.split_file, protocol=args.protocol,
            skip_corrupt=args.skip_corrupt, work_dir=args.work_dir, resume=args.resume,
            progress=_printer(args.quiet), extra_training={"command": command},
        )
    except (DataError, BackboneError, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"bundle written to {args.out} in {time.perf_counter() - t0:.0f}s "
              f"(encoder {manifest['model_sha256'][:16]})")
        for k, v in result.metrics.items():
            print(f"  {k}: {v:.4f}")
    return 0
