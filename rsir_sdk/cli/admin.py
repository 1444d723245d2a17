"""``rsir info``, ``rsir collections``, ``rsir drop``: what a bundle is, what a Milvus holds."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..bundle import Bundle
from ..errors import BundleError
from ..rasters import RasterRule
from ..redact import redact_uri
from ..splits import SPLIT_FILE
from ..store import describe_collections, drop_collection, is_lite_uri
from ..store.schema import rebuild_steps
from .common import EXIT_ERROR, EXIT_OK, add_store_args, collection_name, print_json, warn


def add_parsers(sub: Any) -> None:
    """Register ``info``, ``collections`` and ``drop``."""
    p = sub.add_parser("info", help="what a model bundle is (and its collection, with --uri)")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true", help="print what is said as JSON")
    p.add_argument("--uri", default=None,
                   help="also say what this Milvus (Lite file or server URL) holds in the "
                        "bundle's collection: items, fine codes (and how to rebuild a "
                        "collection made before them)")
    p.add_argument("--collection", default=None, type=collection_name,
                   help="with --uri: the collection (default: <method>_<bits>_<encoder_id>)")
    p.add_argument("--token", default=os.environ.get("MILVUS_TOKEN"),
                   help="with --uri: Milvus token (user:password); default $MILVUS_TOKEN")
    p.set_defaults(func=run_info)

    p = sub.add_parser("collections", help="list collections at a Milvus URI")
    add_store_args(p, collection=False)
    p.add_argument("--json", action="store_true", help="print the collections as JSON")
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
        "archive": b.archive_root, "collection": args.collection or b.default_collection,
        "default_collection": b.default_collection,
        "training": b.manifest.get("training", {}), "parent": b.manifest.get("parent"),
        "fine_bits": b.fine_bits, "fine_code": b.manifest.get("fine_code"),
    }
    if args.uri:
        info["store"] = collection_info(b, args.uri, args.collection, args.token)
    if db_error:
        info["database"] = {**info["database"], "error": db_error}
    # a store asked for (--uri) that cannot be opened fails the command, as an unreadable
    # database does: a script checking rsir info's status read 0 for a file it cannot use
    store_error = (info.get("store") or {}).get("error")
    if args.json:
        print_json(info)
        return EXIT_ERROR if db_error or store_error else EXIT_OK
    for key in ("path", "method", "bits", "encoder_id", "input", "symmetric"):
        print(f"{key:12s} {info[key]}")
    default = "" if info["collection"] == b.default_collection else \
        f" (the bundle's default: {b.default_collection})"
    print(f"{'collection':12s} {info['collection']}{default}")
    print(f"{'fine_bits':12s} {_fine_text(b)}")
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
    selection = training.get("selection") or {}
    if selection.get("reason"):
        print(f"{'selection':12s} {selection['reason']}")
    if info["parent"] and training.get("metrics"):
        print(f"{'metrics':12s} the parent's, measured before it was derived (this bundle's "
              f"agreement with it: parent, below)")
    for k, v in (training.get("metrics") or {}).items():
        print(f"{'metric':12s} {k} = {v:.4f}" if isinstance(v, float) else f"{'metric':12s} {k} = {v}")
    if info["parent"]:
        print(f"{'parent':12s} {_parent_text(info['parent'])}")
    if args.uri:
        for line in store_lines(b, info["store"], args.uri):
            print(line)
    if db_error:
        warn(f"rsir info: {db_error}")
        return EXIT_ERROR
    return EXIT_ERROR if store_error else EXIT_OK


def _parent_text(parent: dict[str, Any]) -> str:
    """A derived bundle's parent in one line: which encoder, how it was derived, how well its
    bits agree (the manifest's record, with every calibration path, is for ``--json``)."""
    calib = parent.get("calibration") or {}
    parts = [f"encoder {parent.get('encoder_id')} ({parent.get('bundle')})",
             str(parent.get("method", "")).strip()]
    if isinstance(parent.get("bit_agreement"), float):
        parts.append(f"bits agree {parent['bit_agreement']:.4%}")
    if isinstance(parent.get("fine_bit_agreement"), float):
        parts.append(f"fine bits {parent['fine_bit_agreement']:.4%}")
    if calib.get("images") or calib.get("count"):
        parts.append(f"calibration {calib.get('images') or calib.get('count')} images")
    return "; ".join(p for p in parts if p)


def _fine_text(b: Bundle) -> str:
    """The bundle's fine code in words."""
    if b.fine_bits is None:
        return ("none (a bundle written before fine codes: ties are ordered by id digest and "
                "there is no appearance search; train it again for one)")
    kind = (b.manifest.get("fine_code") or {}).get("kind")
    return f"{b.fine_bits}" + (f" ({kind})" if kind else "")


def collection_info(b: Bundle, uri: str, collection: str | None,
                    token: str | None) -> dict[str, Any]:
    """What the store at ``uri`` holds in the bundle's collection (``exists`` False when it
    does not exist or the Lite file is missing; ``error`` when it cannot be opened)."""
    from ..errors import (
        CollectionMismatchError,
        CollectionNotFoundError,
        InvalidInputError,
        StoreError,
    )
    from ..store import MilvusCodeStore

    name = collection or b.default_collection
    if is_lite_uri(uri) and not _exists(uri):
        return {"collection": name, "exists": False}
    try:
        with MilvusCodeStore(uri, name, token=token, create=False) as store:
            if not store.exists:
                return {"collection": name, "exists": False}
            return store.info()
    except CollectionNotFoundError:  # the file or server is there, the collection not yet
        return {"collection": name, "exists": False}
    except (StoreError, CollectionMismatchError, InvalidInputError) as exc:
        return {"collection": name, "exists": False, "error": str(exc)}


def store_lines(b: Bundle, found: dict[str, Any], uri: str) -> list[str]:
    """The ``rsir info --uri`` lines about the collection: items and fine codes, and for a
    collection without fine codes while the bundle has them, how to rebuild it."""
    name = found["collection"]
    where = redact_uri(uri)
    if found.get("error"):
        return [f"{'store':12s} {name} at {where}: cannot be opened ({found['error']})"]
    if not found.get("exists"):
        return [f"{'store':12s} {name} at {where}: not created yet (rsir index BUNDLE ARCHIVE "
                f"--uri {where} --collection {name})"]
    fine = found.get("fine_bits")
    lines = [f"{'store':12s} {name} at {where}: {found.get('count', '?')} items, "
             + (f"fine codes {fine} bits" if fine else "no fine codes")]
    if "without_footprint" in found:  # absent: made before place fields
        lines.append(f"{'place, time':12s} {found['without_footprint']} items without a place, "
                     f"{found.get('without_time', '?')} without a time (no place or period "
                     f"filter returns them)")
    filled_by = found.get("encoder") or {}
    other = filled_by.get("encoder_id")
    if other and other != b.encoder_id:
        lines.append(f"{'mismatch':12s} {name} was filled by another encoder ({other}, "
                     f"{filled_by.get('method', '?')} {filled_by.get('bits', '?')} bits), not "
                     f"this bundle's ({b.encoder_id}): searches and writes with it are refused")
    elif not fine and b.fine_bits:
        lines.append(rebuild_hint(name, where))
    return lines


def rebuild_hint(name: str, where: str) -> str:
    """One line: how to rebuild a collection made before fine codes to rank by appearance."""
    return (f"{'rebuild':12s} collection {name} was made before fine codes (searches rank as "
            f"before; no appearance mode or duplicates): to rebuild it, "
            + rebuild_steps(name, where))


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
        warn(f"rsir collections: no Milvus Lite file at {args.uri}")
        return EXIT_ERROR
    rows = describe_collections(args.uri, args.token)
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print(f"no collections at {redact_uri(args.uri)}")
        return EXIT_OK
    print(f"{'collection':36s} {'items':>9}  {'bits':>5}  {'encoder':16s}  {'method':16s}  "
          f"{'raster rule':24s}  {'fine':>5}  no place")
    old = []
    for r in rows:
        if "error" in r:
            print(f"{r['collection']:36s} {'-':>9}  {'-':>5}  ({r['error']})")
            continue
        enc = r.get("encoder") or {}
        rule = enc.get("raster_rule")
        shown = RasterRule.from_dict(rule).describe() if rule is not None else "-"
        # items without a footprint (no place filter returns them); "-": made before place fields
        fine = r.get("fine_bits")
        if "fine_bits" in r and fine is None:
            old.append(r["collection"])
        # fine: the fine-code bits it keeps ("-": none, e.g. made before fine codes)
        print(f"{r['collection']:36s} {r.get('count', '?'):>9}  {r.get('bits', '?'):>5}  "
              f"{enc.get('encoder_id', '-'):16s}  {enc.get('method', '-'):16s}  {shown:24s}  "
              f"{fine if fine is not None else '-':>5}  {r.get('without_footprint', '-')}")
    if old:
        print(f"{len(old)} collection(s) without fine codes ({', '.join(old[:5])}"
              f"{' ...' if len(old) > 5 else ''}): searches rank as before, without appearance "
              f"mode or duplicates; to get them, "
              + rebuild_steps("NAME", redact_uri(args.uri)) + " (with a bundle that has a fine "
              "code)")
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

    return Path(path).expanduser().exists()
