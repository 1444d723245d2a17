"""``rsir info``, ``rsir collections``, ``rsir drop``: what a bundle is, what a Milvus holds."""

from __future__ import annotations

import argparse
from typing import Any

from ..bundle import Bundle
from ..errors import BundleError
from ..rasters import RasterRule
from ..redact import redact_uri
from ..splits import SPLIT_FILE
from ..store import describe_collections, drop_collection, is_lite_uri
from .common import EXIT_ERROR, EXIT_OK, add_store_args, print_json, warn


def add_parsers(sub: Any) -> None:
    """Register ``info``, ``collections`` and ``drop``."""
    p = sub.add_parser("info", help="what a model bundle is")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_info)

    p = sub.add_parser("collections", help="list collections at a Milvus URI")
    add_store_args(p, collection=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_collections)

    p = sub.add_parser("drop", help="delete a whole collection (to rebuild it)",
                       description="Drop a collection and every item in it. Irreversible: "
                                   "re-index the archive afterwards.")
    p.add_argument("collection", help="collection name (see rsir collections)")
    add_store_args(p, collection=False)
    p.add_argument("--yes", action="store_true", help="required: confirm the drop")
    p.set_defaults(func=run_drop)


def run_info(args: argparse.Namespace) -> int:
    """Print what a bundle is; exit 1 when its database codes cannot be read (or were changed),
    after saying so in place of their count."""
    b = Bundle.load(args.bundle)
    db_error = _database_error(b)
    info = {
        "path": str(b.path), "method": b.method, "bits": b.bits, "encoder_id": b.encoder_id,
        "input": [b.input_height, b.input_width], "preprocess": b.preprocess,
        "classes": b.classes, "database": b.manifest.get("database"), "symmetric": b.symmetric,
        "split": SPLIT_FILE if (b.path / SPLIT_FILE).is_file() else None,
        "archive": b.archive_root, "collection": b.default_collection,
        "training": b.manifest.get("training", {}), "parent": b.manifest.get("parent"),
    }
    if db_error:
        info["database"] = {**info["database"], "error": db_error}
    if args.json:
        print_json(info)
        return EXIT_ERROR if db_error else EXIT_OK
    for key in ("path", "method", "bits", "encoder_id", "input", "symmetric", "collection"):
        print(f"{key:12s} {info[key]}")
    more = " ..." if len(b.classes) > 12 else ""
    print(f"{'classes':12s} {len(b.classes)}: {', '.join(b.classes[:12])}{more}")
    db = info["database"]
    if db_error:
        print(f"{'database':12s} unreadable: {db_error}")
    else:
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
    if db_error:
        warn(f"rsir info: {db_error}")
        return EXIT_ERROR
    return EXIT_OK


def _database_error(bundle: Bundle) -> str | None:
    """Why the bundle's database codes cannot be used (damaged, changed), or None."""
    if not bundle.has_database:
        return None
    try:
        bundle.load_database()
    except BundleError as exc:
        return str(exc)
    return None


def run_collections(args: argparse.Namespace) -> int:
    """List the collections at a URI with their size, bits, encoder, raster rule and how many
    items have no footprint."""
    if is_lite_uri(args.uri) and not _exists(args.uri):
        warn(f"no Milvus Lite file at {args.uri}")
        return EXIT_ERROR
    rows = describe_collections(args.uri, args.token)
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print(f"no collections at {redact_uri(args.uri)}")
        return EXIT_OK
    print(f"{'collection':36s} {'items':>9}  {'bits':>5}  {'encoder':16s}  {'method':16s}  "
          f"{'raster rule':24s}  no place")
    for r in rows:
        if "error" in r:
            print(f"{r['collection']:36s} {'-':>9}  {'-':>5}  ({r['error']})")
            continue
        enc = r.get("encoder") or {}
        rule = enc.get("raster_rule")
        shown = RasterRule.from_dict(rule).describe() if rule is not None else "-"
        # items without a footprint (no place filter returns them); "-": made before place fields
        print(f"{r['collection']:36s} {r.get('count', '?'):>9}  {r.get('bits', '?'):>5}  "
              f"{enc.get('encoder_id', '-'):16s}  {enc.get('method', '-'):16s}  {shown:24s}  "
              f"{r.get('without_footprint', '-')}")
    return EXIT_OK


def run_drop(args: argparse.Namespace) -> int:
    """Drop one collection after ``--yes``."""
    from .common import UsageError

    if not args.yes:
        raise UsageError(f"dropping {args.collection!r} deletes every item in it: add --yes")
    n = drop_collection(args.uri, args.collection, args.token)
    held = f"{n} items" if n is not None else "item count unknown"
    print(f"dropped collection {args.collection} ({held}) at {redact_uri(args.uri)}")
    return EXIT_OK


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).exists()
