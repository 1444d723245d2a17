"""The ``rsir`` command: index archives, search, evaluate, inspect bundles; train (extra).

    rsir info BUNDLE
    rsir collections --uri ./rsir.db
    rsir index BUNDLE ARCHIVE --uri ./rsir.db --collection scenes [--label-from parent]
    rsir index BUNDLE --learned --uri ./rsir.db --collection scenes
    rsir search BUNDLE IMAGE --uri ./rsir.db --collection scenes -k 10 [--json] [--html out.html]
    rsir eval BUNDLE --data DIR [--uri URI]
    rsir train ahcl --data DIR --bits 64 --out BUNDLE        (needs the train extra)
    rsir quickstart                                           (needs the train extra)

Exit status: 0 done; 1 error (message on stderr); 2 bad arguments; 3 finished but some
images failed (``rsir index``: see the report file; ``rsir eval``: left out); 130 interrupted
(``rsir index`` resumes when run again).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import RsirError
from .rasters import RasterRuleError

DEFAULT_URI = "./rsir.db"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


def _add_store_args(p: argparse.ArgumentParser, collection_required: bool = False) -> None:
    p.add_argument("--uri", default=DEFAULT_URI,
                   help="Milvus Lite file (./x.db) or server URL (http://host:19530); default %(default)s")
    p.add_argument("--token", default=os.environ.get("MILVUS_TOKEN"),
                   help="Milvus token (user:password) for servers; default $MILVUS_TOKEN")
    p.add_argument(
        "--collection",
        default=None,
        required=collection_required,
        help="collection name (default: <method>_<bits>_<encoder_id>)",
    )


def _add_raster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rasters (TIFF/GeoTIFF; see docs/ingest.md)")
    g.add_argument("--bands", default=None,
                   help="bands to show as RGB, counted from 1 (e.g. 3,2,1; one band = grey); "
                        "default 1,2,3 (1 for 1- and 2-band rasters)")
    g.add_argument("--stretch", default=None,
                   help="range (default: 16-bit scaled from 0..65535, floats from 0..1), "
                        "percentile[:LOW,HIGH] (default 2,98 per band) or fixed:LOW,HIGH")
    g.add_argument("--nodata", type=float, default=None,
                   help="no-data value (default: the file's GDAL_NODATA tag); such pixels become 0")


def _raster_rule(args: argparse.Namespace):
    """The rule the arguments ask for, or None when they ask for nothing."""
    from .rasters import RasterRule

    parts = []
    if args.bands:
        parts.append(f"bands={args.bands}")
    if args.stretch:
        parts.append(f"stretch={args.stretch}")
    if args.nodata is not None:
        parts.append(f"nodata={args.nodata}")
    return RasterRule.parse(";".join(parts)) if parts else None


def _json_arg(text: str | None, name: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{name} must be a JSON object, e.g. '{{\"nlist\": 1024}}': {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{name} must be a JSON object, got {text!r}")
    return value


class UsageError(RsirError):
    """Arguments that do not fit together (exit status 2)."""


def _lite_missing(uri: str) -> bool:
    return "://" not in uri and not Path(uri).exists()


# --------------------------------------------------------------------------- info


def cmd_info(args: argparse.Namespace) -> int:
    from .bundle import Bundle
    from .evaluate import SPLIT_FILE, recorded_data_root

    b = Bundle.load(args.bundle)
    info = {
        "path": str(b.path),
        "method": b.method,
        "bits": b.bits,
        "encoder_id": b.encoder_id,
        "input": [b.input_height, b.input_width],
        "preprocess": b.preprocess,
        "classes": b.classes,
        "database": b.manifest.get("database"),
        "symmetric": b.symmetric,
        "split": SPLIT_FILE if (b.path / SPLIT_FILE).is_file() else None,
        "archive": recorded_data_root(b),
        "training": b.manifest.get("training", {}),
        "parent": b.manifest.get("parent"),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    for key in ("path", "method", "bits", "encoder_id", "input", "symmetric"):
        print(f"{key:12s} {info[key]}")
    more = " ..." if len(b.classes) > 12 else ""
    print(f"{'classes':12s} {len(b.classes)}: {', '.join(b.classes[:12])}{more}")
    db = info["database"]
    print(f"{'database':12s} {db['count']} {db.get('codes', 'learned')} codes" if db
          else f"{'database':12s} none (index an archive: rsir index BUNDLE ARCHIVE)")
    print(f"{'split':12s} {info['split'] or 'none'}")
    if info["archive"]:
        print(f"{'archive':12s} {info['archive']}")
    training = info["training"]
    for key in ("dataset", "protocol", "backbone", "seed", "device", "train_seconds"):
        if key in training:
            print(f"{key:12s} {training[key]}")
    for k, v in (training.get("metrics") or {}).items():
        print(f"{'metric':12s} {k} = {v:.4f}" if isinstance(v, float) else f"{'metric':12s} {k} = {v}")
    if info["parent"]:
        print(f"{'parent':12s} {info['parent']}")
    return EXIT_OK


# --------------------------------------------------------------------------- collections


def cmd_collections(args: argparse.Namespace) -> int:
    from .store import MilvusCodeStore, list_collections

    if _lite_missing(args.uri):
        print(f"no Milvus Lite file at {args.uri}", file=sys.stderr)
        return EXIT_ERROR
    if "://" not in args.uri:
        from .ingest import wait_for_lite_file

        wait_for_lite_file(args.uri)
    rows = []
    for name in list_collections(args.uri, args.token):
        try:
            with MilvusCodeStore(args.uri, name, token=args.token, create=False) as s:
                rows.append(s.info())
        except RsirError as exc:
            rows.append({"collection": name, "error": str(exc)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no collections at {args.uri}")
        return EXIT_OK
    print(f"{'collection':36s} {'items':>9}  {'bits':>5}  {'encoder':16s}  {'method':16s}  raster rule")
    for r in rows:
        if "error" in r:
            print(f"{r['collection']:36s} {'-':>9}  {'-':>5}  ({r['error']})")
            continue
        enc = r.get("encoder") or {}
        rule = enc.get("raster_rule")
        if rule is not None:
            from .rasters import RasterRule

            rule = RasterRule.from_dict(rule).describe()
        print(f"{r['collection']:36s} {r.get('count', '?'):>9}  {r.get('bits', '?'):>5}  "
              f"{enc.get('encoder_id', '-'):16s}  {enc.get('method', '-'):16s}  {rule or '-'}")
    return EXIT_OK


# --------------------------------------------------------------------------- index


def cmd_index(args: argparse.Namespace) -> int:
    if args.learned:
        if args.archive:
            raise UsageError("give either an ARCHIVE to encode or --learned, not both")
        return _index_learned(args)
    if not args.archive:
        raise UsageError("give the ARCHIVE to index (a folder or a .csv manifest), or --learned "
                         "for the bundle's learned database codes")
    return _index_archive(args)


def _index_learned(args: argparse.Namespace) -> int:
    from .ingest import default_collection, wait_for_lite_file
    from .retriever import Retriever
    from .bundle import Bundle

    b = Bundle.load(args.bundle)
    if "://" not in args.uri:
        wait_for_lite_file(args.uri)
    name = args.collection or default_collection(b)
    with Retriever(b, uri=args.uri, collection=name, token=args.token,
                   index_type=args.index_type,
                   index_params=_json_arg(args.index_params, "--index-params")) as r:
        n = r.add_learned_codes()
        total = r.count()
    if args.json:
        print(json.dumps({"indexed": n, "collection": name, "uri": args.uri, "count": total}))
    else:
        print(f"indexed {n} learned database codes into {name} at {args.uri} ({total} items)")
    return EXIT_OK


def _index_archive(args: argparse.Namespace) -> int:
    from .bundle import Bundle
    from .encoder import Encoder
    from .ingest import (
        FailureReport, IngestInterrupted, default_collection, ingest, open_archive,
        open_collection, read_report, recorded_rule,
    )

    b = Bundle.load(args.bundle)
    rule = _raster_rule(args)
    only = None
    if args.retry_failed:
        only = {f.id for f in read_report(args.retry_failed)}
    listing = open_archive(
        args.archive, label_from=args.label_from, root=args.root, path_column=args.path_column,
        id_column=args.id_column, label_column=args.label_column,
        **({"extensions": [e.strip() for e in args.extensions.split(",") if e.strip()]}
           if args.extensions else {}),
    )
    name = args.collection or default_collection(b)
    encoder = Encoder(b, batch_size=args.batch_size, threads=args.threads)
    store = open_collection(
        b, args.uri, name, args.token, rule=rule, index_type=args.index_type,
        index_params=_json_arg(args.index_params, "--index-params"),
    )
    with store:
        if rule is None:  # nothing asked: the rule the collection was filled with
            from .rasters import RasterRule

            rule = recorded_rule(store) or RasterRule()
        report_path = args.report or f"{name}-failed.csv"
        bar = _progress_bar(args, f"indexing into {name}")
        try:
            with FailureReport(report_path) as report:
                summary = ingest(
                    encoder, store, listing, rule=rule, skip_existing=not args.force,
                    only_ids=only, relative_paths=args.relative_paths, workers=args.workers,
                    batch_size=args.batch_size, upsert_batch=args.upsert_batch,
                    max_pixels=args.max_pixels or None, report=report,
                    progress=bar.update_from if bar else None,
                )
        except IngestInterrupted as exc:
            if bar:
                bar.close()
            print(f"\nrsir index: {exc}", file=sys.stderr)
            return EXIT_INTERRUPTED
        if bar:
            bar.close()
        count = store.count()
    if args.json:
        out = summary.as_dict()
        out.update({"count": count, "raster_rule": rule.describe(),
                    "report": summary.report if summary.failed else None})
        print(json.dumps(out, indent=2))
    else:
        print(_summary_text(summary, count, listing, rule))
    return EXIT_PARTIAL if summary.failed else EXIT_OK


def _summary_text(summary, count: int, listing, rule) -> str:
    lines = [
        f"indexed  {summary.indexed:>9} images into {summary.collection} at {summary.uri} "
        f"({summary.seconds:.1f}s, {summary.images_per_second:.1f} images/s)",
        f"skipped  {summary.skipped:>9} already present",
    ]
    if summary.failed:
        lines.append(f"failed   {len(summary.failed):>9} not indexed, listed in {summary.report} "
                     f"(retry: --retry-failed {summary.report})")
        for reason, n in summary.reasons():
            lines.append(f"         {n:>9}  {reason[:150]}")
    else:
        lines.append(f"failed   {0:>9}")
    if summary.ignored:
        shown = ", ".join(listing.ignored[:3]) + (" ..." if summary.ignored > 3 else "")
        lines.append(f"ignored  {summary.ignored:>9} files that are not images by extension ({shown})")
    if not rule.is_default:
        lines.append(f"raster rule  {rule.describe()}")
    lines.append(f"the collection holds {count} items")
    return "\n".join(lines)


class _Bar:
    """tqdm progress bar fed by :class:`~rsir_sdk.ingest.IngestProgress` events."""

    def __init__(self, desc: str, tty: bool):
        from tqdm import tqdm

        self._bar = tqdm(total=None, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr,
                         mininterval=0.5 if tty else 30.0, smoothing=0.1)

    def update_from(self, state) -> None:
        if self._bar.total != state.total:
            self._bar.total = state.total
        self._bar.set_postfix(indexed=state.indexed, skipped=state.skipped, failed=state.failed,
                              refresh=False)
        self._bar.update(state.done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def _progress_bar(args: argparse.Namespace, desc: str) -> _Bar | None:
    if args.no_progress:
        return None
    return _Bar(desc, sys.stderr.isatty())


# --------------------------------------------------------------------------- search


def cmd_search(args: argparse.Namespace) -> int:
    from .bundle import Bundle
    from .encoder import Encoder
    from .ingest import default_collection, open_collection, recorded_rule
    from .rasters import RasterRule, using_rule

    b = Bundle.load(args.bundle)
    name = args.collection or default_collection(b)
    if _lite_missing(args.uri):
        raise RsirError(f"no Milvus Lite file at {args.uri}: index an archive first "
                        f"(rsir index {args.bundle} ARCHIVE --uri {args.uri})")
    from .errors import StoreError

    try:
        store = open_collection(b, args.uri, name, args.token, create=False,
                                search_params=_json_arg(args.search_params, "--search-params"))
    except StoreError as exc:
        if "does not exist" in str(exc):
            raise StoreError(f"{exc}: index into it first (rsir index {args.bundle} ARCHIVE "
                             f"--uri {args.uri} --collection {name})") from None
        raise
    with store:
        rule = _raster_rule(args) or recorded_rule(store) or RasterRule()
        encoder = Encoder(b)
        with using_rule(rule):
            codes = encoder.encode([args.image])
        hits = store.search(codes, k=args.k, filter=args.filter, radius=args.radius)[0]
    rows = [{"rank": i, "id": h.id, "distance": h.distance, "label": h.label, "path": h.path,
             "metadata": h.metadata} for i, h in enumerate(hits, 1)]
    if args.html:
        from .gallery import write_gallery

        roots = list(args.root or [])
        out = write_gallery(args.html, args.image, hits, roots=roots, embed=not args.link_images,
                            rule=rule, details={"collection": name, "uri": args.uri,
                                                "encoder": b.encoder_id, "k": args.k})
        print(f"wrote {out} ({len(hits)} hits)", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(format_hits(hits))
    return EXIT_OK


def format_hits(hits) -> str:
    """A plain-text table of hits: rank, id, distance, label, path."""
    if not hits:
        return "no hits"
    wid = min(48, max(2, *(len(h.id) for h in hits)))
    wlab = min(24, max(5, *(len(h.label) for h in hits)))
    lines = [f"{'rank':>4}  {'id':{wid}s}  {'distance':>8}  {'label':{wlab}s}  path"]
    for i, h in enumerate(hits, 1):
        lines.append(f"{i:>4}  {h.id:{wid}s}  {h.distance:>8}  {h.label[:wlab]:{wlab}s}  {h.path}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import describe, evaluate_bundle

    ks = [int(k) for k in args.ks.split(",") if k.strip()] if args.ks else None
    bar = None if args.no_progress else _StageBar()
    result = evaluate_bundle(
        args.bundle, args.data, uri=args.uri, collection=args.collection, token=args.token,
        ks=ks or (10, 20, 100), database=args.database, rule=_raster_rule(args),
        workers=args.workers, batch_size=args.batch_size, progress=bar,
    )
    if bar:
        bar.close()
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(describe(result))
        for f in result.failed[:10]:
            print(f"  left out {f.path}: {f.reason}", file=sys.stderr)
    return EXIT_PARTIAL if result.failed else EXIT_OK


class _StageBar:
    """One tqdm bar per stage of :func:`rsir_sdk.evaluate.evaluate_bundle`."""

    def __init__(self):
        self._stage = None
        self._bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=total, desc=stage, unit="img" if stage != "search" else "query",
                             file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 30.0)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --------------------------------------------------------------------------- train, quickstart


def _forward(module: str, argv: Sequence[str], what: str) -> int:
    try:
        mod = __import__(module, fromlist=["main"])
    except ImportError as exc:
        print(
            f"rsir {what} needs the training extra (torch, onnx): pip install 'rsir-sdk[train]' "
            f"({exc})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return int(mod.main(list(argv)) or 0)


def cmd_train(args: argparse.Namespace, rest: Sequence[str]) -> int:
    return _forward("export.cli", ["train", *rest], "train")


def cmd_quickstart(rest: Sequence[str]) -> int:
    return _forward("export.quickstart", rest, "quickstart")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsir", description=__doc__.split("\n")[0],
        epilog="exit status: 0 done, 1 error, 2 bad arguments, 3 some images failed, "
               "130 interrupted (re-run to resume)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="what a model bundle is")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("collections", help="list collections at a Milvus URI")
    p.add_argument("--uri", default=DEFAULT_URI)
    p.add_argument("--token", default=os.environ.get("MILVUS_TOKEN"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_collections)

    p = sub.add_parser(
        "index", help="encode an archive (folder or CSV) into a collection; resumable",
        description="Encode every image of ARCHIVE and upsert its code. Re-running skips the "
                    "ids already in the collection, so an interrupted run finishes the rest. "
                    "Images that fail are listed in the report file (exit status 3).",
    )
    p.add_argument("bundle")
    p.add_argument("archive", nargs="?", help="folder of images (walked recursively) or a .csv manifest")
    p.add_argument("--learned", action="store_true",
                   help="index the bundle's learned database codes (AHCL) instead of an archive")
    _add_store_args(p)
    g = p.add_argument_group("archive")
    g.add_argument("--label-from", choices=["none", "parent", "top"], default="none",
                   help="folder archives: label = the folder holding the file (parent) or the "
                        "first folder under the archive (top); default none")
    g.add_argument("--extensions", default=None,
                   help="folder archives: comma-separated file extensions to index "
                        "(default .jpg,.jpeg,.png,.tif,.tiff,.bmp,.webp,.gif,.jp2)")
    g.add_argument("--root", default=None, help="CSV: folder the paths are relative to "
                                                "(default: the CSV's folder)")
    g.add_argument("--path-column", default="path", help="CSV: image path column (default path)")
    g.add_argument("--id-column", default=None, help="CSV: id column (default: 'id' if present, "
                                                     "else the path)")
    g.add_argument("--label-column", default=None, help="CSV: label column (default: 'label' if present)")
    g.add_argument("--relative-paths", action="store_true",
                   help="store paths relative to the archive root (default: absolute paths)")
    g = p.add_argument_group("resuming and failures")
    g.add_argument("--report", default=None,
                   help="failure report CSV (id,path,stage,reason); default ./<collection>-failed.csv, "
                        "removed when nothing failed")
    g.add_argument("--retry-failed", metavar="REPORT", default=None,
                   help="index only the images listed in this failure report")
    g.add_argument("--force", action="store_true",
                   help="re-encode images whose id is already present (files changed)")
    g = p.add_argument_group("performance")
    g.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPUs, 2..8)")
    g.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    g.add_argument("--batch-size", type=int, default=32, help="images per encoder call (default 32)")
    g.add_argument("--upsert-batch", type=int, default=512, help="rows per Milvus upsert (default 512)")
    g.add_argument("--max-pixels", type=int, default=100_000_000,
                   help="refuse images with more pixels (default 100000000; 0 = no limit)")
    g.add_argument("--index-type", default=None,
                   help="index of a new collection: BIN_FLAT (default; the only one Milvus Lite has) "
                        "or BIN_IVF_FLAT/HNSW on a server")
    g.add_argument("--index-params", default=None, help='JSON, e.g. \'{"nlist": 1024}\'')
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_raster_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search a collection with an image")
    p.add_argument("bundle")
    p.add_argument("image", help="image path or http(s) URL")
    p.add_argument("-k", type=int, default=10, help="number of hits (default 10)")
    p.add_argument("--filter", default=None, help='Milvus expression, e.g. \'label == "forest"\'')
    p.add_argument("--radius", type=int, default=None, help="only hits within this Hamming distance")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.add_argument("--html", default=None, metavar="OUT.html",
                   help="write a gallery page with the query and its hits as thumbnails")
    p.add_argument("--root", action="append", default=None,
                   help="folder to find images with relative paths in (repeatable)")
    p.add_argument("--link-images", action="store_true",
                   help="gallery links the image files (relative paths) instead of inlining thumbnails")
    p.add_argument("--search-params", default=None, help='JSON, e.g. \'{"nprobe": 16}\'')
    _add_store_args(p)
    _add_raster_args(p)
    p.set_defaults(func=cmd_search)

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
    p.add_argument("--collection", default=None, help="collection (default eval_<method>_<bits>_<id>)")
    p.add_argument("--ks", default="10,20,100", help="k of mAP@k and P@k (default 10,20,100)")
    p.add_argument("--database", choices=["auto", "train", "query"], default="auto",
                   help="train split as database (AHCL) or query split leave-one-out (MiLAN); "
                        "default: by the bundle's protocol")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    _add_raster_args(p)
    p.set_defaults(func=cmd_eval)

    from . import quantize  # light: onnx and onnxruntime.quantization load when it runs

    p = sub.add_parser("quantize", help="derive an int8 (or fp16) bundle; needs onnx")
    quantize.add_arguments(p)
    p.set_defaults(func=quantize.cmd_quantize)

    p = sub.add_parser("train", help="train an encoder (needs the train extra)", add_help=False)
    p.set_defaults(func=None)
    p = sub.add_parser("quickstart", help="train, index and search the shipped sample (train extra)",
                       add_help=False)
    p.set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rsir`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # milvus-lite 2.5 imports pkg_resources, whose deprecation warning means nothing to users
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    if argv and argv[0] == "train":
        return cmd_train(argparse.Namespace(), argv[1:])
    if argv and argv[0] == "quickstart":
        return cmd_quickstart(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except (UsageError, RasterRuleError) as exc:
        parser.print_usage(sys.stderr)
        print(f"rsir {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RsirError as exc:
        print(f"rsir {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"\nrsir {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
