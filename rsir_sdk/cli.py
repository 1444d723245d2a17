"""The ``rsir`` command: inspect bundles, search collections, and (with the train extra) train.

    rsir info BUNDLE
    rsir collections --uri ./rsir.db
    rsir index BUNDLE --learned --uri ./rsir.db --collection scenes
    rsir search BUNDLE IMAGE --uri ./rsir.db --collection scenes -k 10 [--json]
    rsir train ahcl --data DIR --bits 64 --out BUNDLE        (needs the train extra)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

from .errors import RsirError

DEFAULT_URI = "./rsir.db"


def _add_store_args(p: argparse.ArgumentParser, collection_required: bool = False) -> None:
    p.add_argument("--uri", default=DEFAULT_URI, help="Milvus Lite file (./x.db) or server URL")
    p.add_argument("--token", default=None, help="Milvus token (user:password) for servers")
    p.add_argument(
        "--collection",
        default=None,
        required=collection_required,
        help="collection name (default: <method>_<bits>_<encoder_id>)",
    )


def cmd_info(args: argparse.Namespace) -> int:
    from .bundle import Bundle

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
        "training": b.manifest.get("training", {}),
        "parent": b.manifest.get("parent"),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key in ("path", "method", "bits", "encoder_id", "input", "symmetric"):
        print(f"{key:12s} {info[key]}")
    print(f"{'classes':12s} {len(b.classes)}: {', '.join(b.classes[:12])}{' ...' if len(b.classes) > 12 else ''}")
    db = info["database"]
    print(f"{'database':12s} {db['count']} {db.get('codes', 'learned')} codes" if db else f"{'database':12s} none (encode the archive)")
    metrics = info["training"].get("metrics") or {}
    for k, v in metrics.items():
        print(f"{'metric':12s} {k} = {v}")
    return 0


def cmd_collections(args: argparse.Namespace) -> int:
    from .store import MilvusCodeStore, list_collections

    rows = []
    for name in list_collections(args.uri, args.token):
        with MilvusCodeStore(args.uri, name, token=args.token, create=False) as s:
            try:
                rows.append(s.info())
            except RsirError as exc:
                rows.append({"collection": name, "error": str(exc)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no collections at {args.uri}")
    for r in rows:
        enc = r.get("encoder") or {}
        print(
            f"{r['collection']:40s} {r.get('count', '?'):>9} items  {r.get('bits', '?')} bits  "
            f"encoder {enc.get('encoder_id', '-')} ({enc.get('method', '-')})"
        )
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from .retriever import Retriever

    if not args.learned:
        print("rsir index: only --learned is available in this version", file=sys.stderr)
        return 2
    with Retriever.from_bundle(args.bundle, uri=args.uri, collection=args.collection, token=args.token) as r:
        n = r.add_learned_codes()
        print(f"indexed {n} learned database codes into {r.store.collection} at {r.store.uri} "
              f"({r.count()} items)")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .retriever import Retriever

    with Retriever.from_bundle(args.bundle, uri=args.uri, collection=args.collection, token=args.token) as r:
        hits = r.search(args.image, k=args.k, filter=args.filter, radius=args.radius)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], indent=2))
        return 0
    print(format_hits(hits))
    return 0


def format_hits(hits) -> str:
    """A plain-text table of hits: rank, id, distance, label, path."""
    lines = [f"{'rank':>4}  {'distance':>8}  {'label':20s}  id"]
    for i, h in enumerate(hits, 1):
        lines.append(f"{i:>4}  {h.distance:>8}  {h.label[:20]:20s}  {h.id}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace, rest: Sequence[str]) -> int:
    try:
        from export.cli import main as export_main
    except ImportError as exc:
        print(
            f"rsir train needs the training extra (torch, onnx): pip install 'rsir-sdk[train]' "
            f"({exc})",
            file=sys.stderr,
        )
        return 2
    return int(export_main(["train", *rest]) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsir", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="what a model bundle is")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("collections", help="list collections at a Milvus URI")
    p.add_argument("--uri", default=DEFAULT_URI)
    p.add_argument("--token", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_collections)

    p = sub.add_parser("index", help="put codes into a collection")
    p.add_argument("bundle")
    p.add_argument("--learned", action="store_true", help="the bundle's learned database codes")
    _add_store_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search a collection with an image")
    p.add_argument("bundle")
    p.add_argument("image", help="image path or http(s) URL")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--filter", default=None, help='Milvus expression, e.g. \'label == "forest"\'')
    p.add_argument("--radius", type=int, default=None, help="only hits within this Hamming distance")
    p.add_argument("--json", action="store_true")
    _add_store_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("train", help="train an encoder (needs the train extra)", add_help=False)
    p.set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rsir`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "train":
        return cmd_train(argparse.Namespace(), argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except RsirError as exc:
        print(f"rsir {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
