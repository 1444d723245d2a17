"""What the command line runs once it has parsed: turn arguments into configurations, call the
library, print progress and results. The parsers are :mod:`rsir_train.cli`; this is the only
other module of the training side that prints.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Progress

__all__ = ["command_line", "quantize", "quickstart", "train"]

#: ``--freeze-blocks auto``
AUTO = "auto"


def command_line(args: argparse.Namespace) -> str:
    """The command as the user typed it, for the manifest (``rsir train ahcl ...``)."""
    return "rsir " + shlex.join(args.argv)


# --------------------------------------------------------------------------- configuration


def _preprocess(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--resize`` / ``--crop`` as preprocessing overrides (``--resize 0`` = straight resize)."""
    pre: dict[str, Any] = {}
    if args.resize is not None:
        pre["resize"] = args.resize if args.resize > 0 else None
    if args.crop is not None:
        pre["crop"] = [args.crop, args.crop]
    return pre or None


def _cache(args: argparse.Namespace) -> str | bool | None:
    return False if args.no_cache else args.cache_dir


def ahcl_config(args: argparse.Namespace) -> Any:
    """Parsed ``train ahcl`` arguments as an :class:`~rsir_train.ahcl.AHCLConfig`."""
    from .ahcl import AHCLConfig
    from .backbones import build_backbone, cpu_freeze_blocks
    from .trainer import default_device

    outer = args.outer
    if args.epochs:
        outer = max(1, -(-args.epochs // (args.inner or (2 if args.schedule == "authors" else 1))))
    steps = args.lr_steps
    device = args.device or default_device()
    if args.freeze_blocks == AUTO:
        freeze = cpu_freeze_blocks(args.backbone) if device == "cpu" else 0
    else:
        freeze = int(args.freeze_blocks)
    build_backbone(args.backbone, pretrained=False)  # a typo fails before any data is read
    return AHCLConfig(
        bits=args.bits, backbone=args.backbone, pretrained=not args.no_pretrained,
        weights=args.weights, schedule=args.schedule, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, batch_size=args.batch_size, outer=outer,
        inner=args.inner, lr_steps=None if steps is None else tuple(steps), lam=args.lam,
        gamma=args.gamma, amp=args.amp,
        num_samples=args.num_samples or None, freeze_blocks=freeze, preprocess=_preprocess(args),
        seed=args.seed, device=device, eval_every=args.eval_every, cache_dir=_cache(args),
        select=getattr(args, "select", "auto"), val_fraction=getattr(args, "val_fraction", 0.2),
        val_folds=getattr(args, "val_folds", 3), patience=getattr(args, "patience", 6),
        candidates=getattr(args, "candidates", None),
    )


def milan_config(args: argparse.Namespace) -> Any:
    """Parsed ``train milan`` arguments as a :class:`~rsir_train.milan.MilanConfig`."""
    from .backbones import build_backbone
    from .milan import MilanConfig, MilanParams
    from .trainer import default_device

    build_backbone(args.backbone, pretrained=False)  # a typo fails before any data is read
    device = args.device or default_device()
    params = MilanParams(
        margin=args.margin, push_weight=args.push_weight, balance_weight=args.balance_weight,
        lr=args.lr, iterations=args.iterations, triplets_per_batch=args.triplets,
        miner=args.miner or ("random" if args.authors else "batch-hard"), seed=args.seed,
        device=device, log_every=args.log_every,
        val_fraction=0.0 if args.authors else args.val_fraction, val_folds=args.val_folds,
        val_metric=args.val_metric,
        val_every=args.val_every,
        patience=0 if args.authors else args.patience, refit=args.refit and not args.authors,
        weight_decay=args.weight_decay, input_dropout=args.input_dropout,
        # None: the trainer's default (MilanParams); --authors turns both off
        **{name: 0.0 if args.authors else value  # type: ignore[arg-type]
           for name, value in (("classifier_weight", args.classifier_weight),
                               ("ema_decay", args.ema_decay))
           if args.authors or value is not None},
    )
    return MilanConfig(
        bits=args.bits, backbone=args.backbone, pretrained=not args.no_pretrained,
        weights=args.weights, preprocess=_preprocess(args), params=params, device=device,
        cache_dir=_cache(args), batch_size=args.batch_size,
    )


def itq_config(args: argparse.Namespace) -> Any:
    """Parsed ``train itq`` arguments as an :class:`~rsir_train.itq.ITQConfig`."""
    from .backbones import build_backbone
    from .itq import ITQConfig
    from .trainer import default_device

    build_backbone(args.backbone, pretrained=False)  # a typo fails before any data is read
    return ITQConfig(
        bits=args.bits, backbone=args.backbone, pretrained=not args.no_pretrained,
        weights=args.weights, preprocess=_preprocess(args), iterations=args.iterations,
        l2_normalize=not args.no_l2, seed=args.seed, device=args.device or default_device(),
        cache_dir=_cache(args), batch_size=args.batch_size,
    )


# --------------------------------------------------------------------------- printing


def _iteration_line(event: dict[str, Any]) -> str:
    """A MiLAN progress line: the objective and its terms, then the validation so far. The
    iteration count is a cap where validation stops the run (patience) sooner."""
    ce = f", ce {event['ce']:.4f}" if "ce" in event else ""
    line = (f"iteration {event['iteration']} (of at most {event['iterations']}): "
            f"loss={event['loss']:.4f} (triplet {event['triplet']:.4f}, push "
            f"{event['push']:.4f}, balance {event['balance']:.5f}{ce}) {event['seconds']:.0f}s")
    if "val_map" in event:
        line += (f" mAP(val)={event['val_map']:.4f} (best {event['best_val_map']:.4f} at "
                 f"{event['best_iteration']})")
    return line


def _printer(quiet: bool) -> "Progress":
    """Progress lines for both trainers (AHCL outer iterations, MiLAN iterations, caches)."""

    def show(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if quiet:
            return
        if kind == "outer":
            extra = f" mAP(query)={event['map_query']:.4f}" if "map_query" in event else ""
            extra += f" mAP(val)={event['val_map']:.4f}" if "val_map" in event else ""
            tag = f"[{event['candidate']}] " if "candidate" in event else ""
            of = f"/{event['of']}" if "of" in event else ""
            if "of" in event and event["of"] > event["outer"]:  # at this iteration's pace
                extra += f" (~{(event['of'] - event['outer']) * event['seconds']:.0f}s left)"
            print(f"{tag}outer {event['outer']}{of}: loss={event['loss']:.4f} (pair {event['pairwise']:.4f}, "
                  f"quant {event['quantization']:.4f}, ce {event['classification']:.4f}) "
                  f"lr={event['lr']:.2g} {event['seconds']:.1f}s{extra}", flush=True)
        elif kind == "iteration":
            print(_iteration_line(event), flush=True)
        elif kind == "cache_progress" and (event["done"] == event["total"]
                                           or event["done"] % 512 < 64):
            print(f"frozen features {event['done']}/{event['total']}", flush=True)
        elif kind == "cache_resumed":
            print(f"frozen features: resuming at {event['done']}/{event['total']} "
                  f"({event['path']})", flush=True)
        elif kind in ("cache_hit", "cache_saved"):
            print(f"feature {kind.replace('_', ' ')}: {event['path']}", flush=True)
        elif kind == "selection":
            print(f"model selection: {event['chosen']} ({event['reason']})", flush=True)
        elif kind in ("selection_plan", "selection_progress"):
            print(f"model selection: {event['text']}", flush=True)
        elif kind == "resumed":
            print(f"resumed after outer iteration {event['outer_done']}", flush=True)

    return show


def _quantize_printer() -> "Progress":
    """``rsir quantize``'s progress on stderr (stdout keeps the summary or the JSON): a minute
    or more on a CPU, calibration batches and each try at the agreement target."""

    def show(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "check":
            text = f"quantize: the result is checked against the parent on {event['images']} images"
        elif kind == "calibrate" and (event["batch"] == event["batches"] or event["batch"] % 4 == 1):
            text = f"quantize: calibration batch {event['batch']}/{event['batches']}"
        elif kind == "attempt":
            text = (f"quantize: {event['leading_float']} leading layer(s) kept in float: "
                    f"{event['bit_agreement']:.4%} of bits agree with the parent")
        else:
            return
        print(text, file=sys.stderr, flush=True)

    return show


def _print_metrics(metrics: dict[str, Any]) -> None:
    for k, v in metrics.items():
        print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")


# --------------------------------------------------------------------------- commands


def _fine(args: argparse.Namespace) -> dict[str, Any]:
    """``{"fine": FineCodeConfig}`` when ``--fine-code`` was given, else nothing (the default)."""
    fine = getattr(args, "fine_code", None)
    return {} if fine is None else {"fine": fine}


def train(args: argparse.Namespace) -> int:
    """``rsir train ahcl|milan|itq``: train, write the bundle, then evaluate / index / record."""
    from .train_checks import check_device, check_train_outputs

    check_train_outputs(args)
    check_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    extra = {"command": command_line(args)}
    if args.method == "ahcl":
        from .ahcl import train_ahcl_bundle

        result, manifest, data = train_ahcl_bundle(
            args.data, args.out, ahcl_config(args), split_file=args.split_file,
            protocol=args.protocol, skip_corrupt=args.skip_corrupt, work_dir=args.work_dir,
            resume=args.resume, progress=_printer(args.quiet), extra_training=extra,
            with_data=True, **_fine(args),
        )
        cache = _checkpoints_text(args)
    elif args.method == "itq":
        from .itq import train_itq_bundle

        result, manifest, data = train_itq_bundle(
            args.data, args.out, itq_config(args), labels=args.labels,
            split_file=args.split_file, protocol=args.protocol, skip_corrupt=args.skip_corrupt,
            progress=_printer(args.quiet), extra_training=extra, **_fine(args),
        )
        cache = f", features {result.feature_cache}"
    else:
        from .milan import train_milan_bundle

        result, manifest, data = train_milan_bundle(
            args.data, args.out, milan_config(args), split_file=args.split_file,
            protocol=args.protocol, skip_corrupt=args.skip_corrupt,
            progress=_printer(args.quiet), extra_training=extra, **_fine(args),
        )
        cache = f", features {result.feature_cache}"
    if not args.quiet:
        print(f"bundle written to {args.out} in {time.perf_counter() - t0:.0f}s "
              f"(encoder {manifest['model_sha256'][:16]}{cache})")
        _print_metrics(result.metrics)
    manifest = _after_training(args, manifest, data)
    if args.results:
        from .results import append_results, records_for_manifest

        append_results(args.results, records_for_manifest(manifest))
    return 0


def _checkpoints_text(args: argparse.Namespace) -> str:
    """Where an AHCL run's checkpoints stay, and their size: a finished run keeps them (a
    selecting run's are a few hundred MB) and nothing reads them unless asked (``--resume``)."""
    work = Path(args.work_dir) if args.work_dir else Path(str(args.out).rstrip("/\\") + ".work")
    if not work.is_dir():
        return ""
    size = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
    return f"; checkpoints kept in {work}, {size / 1e6:.1f} MB, safe to delete"


def _after_training(args: argparse.Namespace, manifest: dict[str, Any], data: Any) -> dict[str, Any]:
    """``--eval`` (metrics into the manifest) and ``--index`` (MiLAN, ITQ) of a freshly written
    bundle."""
    if args.eval and not data.split.query_ids:
        print(f"rsir train {args.method}: --eval needs a labelled archive with a query split; "
              f"skipped", file=sys.stderr)
    elif args.eval:
        from rsir_sdk.bundle_writer import update_manifest

        from .evaluation import evaluate_protocols
        from .milan.bundle import EVAL_FOR_SPLIT

        auto = EVAL_FOR_SPLIT.get(data.split.protocol, "ahcl")
        protocols = {"auto": [auto], "both": ["milan", "ahcl"]}.get(args.eval, [args.eval])
        source = data.source if data.archive.kind == "csv" else data.archive.root
        metrics = evaluate_protocols(args.out, source, protocols, uri=args.eval_uri,
                                     batch_size=args.batch_size)
        training = dict(manifest.get("training") or {})
        training["metrics"] = {**training.get("metrics", {}), **metrics}
        manifest = update_manifest(args.out, training=training)
        if not args.quiet:
            _print_metrics(metrics)
    if getattr(args, "index", None):
        from .indexing import index_split_side

        summary = index_split_side(args.out, data.archive, data.split, args.index,
                                   args.collection, side=args.index_side,
                                   batch_size=args.batch_size)
        if not args.quiet:
            print(f"indexed {summary.indexed} images into {summary.collection} at {args.index}"
                  + (f" ({summary.skipped} already there)" if summary.skipped else "")
                  + (f"; {len(summary.failed)} failed" if summary.failed else ""))
    return manifest


def quantize(args: argparse.Namespace) -> int:
    """``rsir quantize``: derive the bundle, print a summary (or ``--json``)."""
    from .quantize import QuantizeOptions, quantize_bundle

    options = QuantizeOptions(
        precision=args.precision, method=args.method, reader=args.reader, count=args.count,
        check=args.check, seed=args.seed, per_channel=not args.per_tensor,
        quantize_hash_layer=args.quantize_hash_layer, fold_pads=not args.no_fold_pads,
        activations=args.activations, keep_float=tuple(args.keep_float or ()),
        target_agreement=args.target_agreement, reduce_range=args.reduce_range,
        batch_size=args.batch_size, min_agreement=args.min_agreement, overwrite=args.overwrite,
    )
    res = quantize_bundle(args.bundle, args.calibration, args.out, options,
                          progress=_quantize_printer())
    if args.json:
        d = asdict(res)
        d["path"] = str(res.path)
        print(json.dumps(d, indent=2))
        _quantize_cautions(args, res)  # stderr: stdout stays the JSON
        return 0
    print(f"{res.precision} bundle written to {res.path} in {res.seconds:.0f}s")
    print(f"  encoder     {res.encoder_id} (parent {res.parent_encoder_id}); index its codes in a "
          f"collection of its own")
    print(f"  model       {res.model_bytes / 1e6:.2f} MB (parent {res.parent_model_bytes / 1e6:.2f} MB)")
    if res.precision == "int8":
        print(f"  calibration {res.calibration_images} images, {res.method}")
    if len(res.attempts) > 1:
        tried = ", ".join(f"{a['leading_float']} -> {a['bit_agreement']:.4%}" for a in res.attempts)
        print(f"  retries     leading layers kept in float -> agreement: {tried}")
    if res.precision == "int8":
        print(f"  float32     {len(res.float_layers)} weighted layer(s): "
              f"{', '.join(res.float_layers[:8])}{' ...' if len(res.float_layers) > 8 else ''}")
    print(f"  agreement   {res.bit_agreement:.4%} of bits, {res.codes_identical:.1%} of codes "
          f"identical on {res.check_images} {res.check_set} images")
    if res.fine_bit_agreement is not None:
        print(f"  fine code   {res.fine_bit_agreement:.4%} of bits agree (its head stays float32)")
    _quantize_cautions(args, res)
    return 0


def _quantize_cautions(args: argparse.Namespace, res: Any) -> None:
    """Say, on stderr, when the agreement missed its target or was measured in-sample or on
    few images: the bundle is written either way, and the summary alone read as a pass."""
    notes = []
    target = args.target_agreement
    if res.precision == "int8" and target and res.bit_agreement < target:
        notes.append(f"the agreement {res.bit_agreement:.4%} is below --target-agreement "
                     f"{target:.2%} after every try (the best was kept): check the search "
                     f"quality, or try --keep-float or --precision fp16")
    if res.check_set == "calibration":
        notes.append("the agreement was measured on the calibration images themselves (no "
                     "held-out image left): give more images for a fair check")
    elif res.check_images < 32:
        notes.append(f"the agreement rests on {res.check_images} images: give more for a "
                     f"reliable figure")
    for note in notes:
        print(f"rsir quantize: note: {note}", file=sys.stderr)


def quickstart(args: argparse.Namespace) -> int:
    """``rsir quickstart``: see :mod:`rsir_train.quickstart`."""
    from .quickstart import run_quickstart

    return run_quickstart(args, command_line(args))
