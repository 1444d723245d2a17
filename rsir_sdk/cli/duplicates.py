"""``rsir duplicates``: groups of near-identical images in a collection, as a CSV or JSON report.

Two items are near-identical when their fine codes (issue 20: the bundle's label-free,
appearance-preserving code beside the retrieval code) lie within ``--radius`` Hamming bits;
groups link transitively (a ~ b and b ~ c: one group). The report lists, per group, the ids
with their paths and labels, so that the copies can be looked at and removed. A collection made
before fine codes has none to compare: the command says how to rebuild it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .. import staging
from ..call_checks import check_radius_length
from ..errors import RsirError
from ..geo import GeoFilter
from ..hits import StoredItem
from ..retriever import Retriever
from ..store import DEFAULT_DUPLICATE_RADIUS
from .common import (
    EXIT_OK,
    RADIUS_TYPE,
    ProgressBar,
    UsageError,
    add_store_args,
    filter_arg,
    warn,
)
from .search import place_args

#: report columns, in order (CSV header; JSON item keys)
COLUMNS = ("group", "id", "path", "label")
#: ids read back per ``get`` call for the report's paths and labels
GET_CHUNK = 1000


def add_parser(sub: Any) -> None:
    """Register ``rsir duplicates``."""
    p = sub.add_parser(
        "duplicates", help="list groups of near-identical images in a collection (CSV/JSON)",
        description="Groups of images whose fine codes lie within --radius of each other "
                    "(linked transitively): the same scene stored twice, re-encoded, resized or "
                    "brightened (crops of more than a few pixels are not found at any radius "
                    "without joining distinct scenes: docs/similar.md). Writes a report: group "
                    "number, id, path, label; look at a group before deleting from it.")
    p.add_argument("bundle", help="the bundle the collection was filled with")
    add_store_args(p)
    p.add_argument("--radius", type=RADIUS_TYPE, default=None,
                   help="largest fine-code Hamming distance of two near-identical images "
                        f"(inclusive; default {DEFAULT_DUPLICATE_RADIUS} for 128-bit fine "
                        f"codes, scaled to other lengths)")
    p.add_argument("--filter", default=None,
                   help='only items matching it: a JSON object (\'{"label": "forest"}\') or a '
                        'Milvus expression')
    p.add_argument("--bbox", default=None, metavar="W,S,E,N",
                   help="only items whose footprint meets this lon/lat box")
    p.add_argument("--near", default=None, metavar="LON,LAT,METRES",
                   help="only items whose footprint lies within METRES of the point")
    p.add_argument("--time", default=None, metavar="START/END",
                   help="only items whose time lies in the period (ISO 8601)")
    p.add_argument("--format", choices=["csv", "json"], default="csv",
                   help="report format (default csv: one row per item of a group)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the report here (default: standard output)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Find the groups, read their paths and labels, write the report; a summary on stderr."""
    filt = filter_arg(args.filter)
    place = place_args(args)
    with Retriever(args.bundle, uri=args.uri, collection=args.collection,
                   token=args.token) as r:
        groups = find_groups(r, args.radius, filt, place)
        radius = args.radius if args.radius is not None else default_radius(r)
        items = read_items(r, [i for g in groups for i in g])
        collection = r.collection
    rows = report_rows(groups, items)
    text = (to_json(rows, collection, radius) if args.format == "json" else to_csv(rows))
    if args.out:
        try:
            staging.replace_text(Path(args.out), text)  # the old report or the new one
        except OSError as exc:
            raise RsirError(f"cannot write the report {args.out}: "
                            f"{exc.strerror or exc}") from None
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    where = f"; wrote {args.out}" if args.out else ""
    warn(f"{len(groups)} group(s) of near-identical images ({len(rows)} items) within fine "
         f"distance {radius} in collection {collection}{where}")
    say_large_groups(groups, radius)
    return EXIT_OK


#: a group larger than this is more likely a chain of look-alike scenes than copies of one
LARGE_GROUP = 5


def say_large_groups(groups: Sequence[Sequence[str]], radius: int) -> None:
    """One warning when groups are large: scenes of little texture (sea, lake, sand, snow) lie
    close in the fine code and chain into one group (19 distinct EuroSAT sea scenes at the
    default radius), which a reader deleting "the copies" would lose."""
    large = [g for g in groups if len(g) > LARGE_GROUP]
    if large:
        warn(f"{len(large)} group(s) hold more than {LARGE_GROUP} items (the largest "
             f"{max(map(len, large))}): look-alike scenes of little texture (water, sand, snow) "
             f"chain into one group; look at them before deleting, or lower --radius (now "
             f"{radius})")


def default_radius(r: Retriever) -> int:
    """The radius the store used for ``radius=None``: :data:`DEFAULT_DUPLICATE_RADIUS` scaled
    to the collection's fine-code length."""
    from ..store.dupes import default_radius as scaled

    return scaled(int(r.store.fine_bits or r.bundle.fine_bits or 128))


def find_groups(r: Retriever, radius: int | None, filt: Any,
                place: dict[str, Any]) -> list[list[str]]:
    """The groups, with progress on stderr (a bar on a terminal, a line every 30 s otherwise).

    Calls the store directly (what :meth:`Retriever.duplicates` does, with its ``progress``
    callback), after the same checks of the filter and the place and period."""
    if r.bundle.fine_bits is None:
        raise UsageError(f"duplicates are found by the fine code; the bundle {r.bundle.path} has "
                         f"none (written before fine codes): train it again with rsir train")
    check_radius_length(radius, r.bundle.fine_bits, "fine-code")
    geo = r.store.check_geo(GeoFilter.of(place["bbox"], place["near"], place["time"]))
    bar = ProgressBar("duplicates", unit="item")
    try:
        return r.store.duplicates(radius, filt, geo=geo,
                                  progress=lambda done, total: bar.update(done, total))
    finally:
        bar.close()


def read_items(r: Retriever, ids: Sequence[str]) -> dict[str, StoredItem]:
    """The stored items of ``ids`` (their paths and labels), by id."""
    out: dict[str, StoredItem] = {}
    for i in range(0, len(ids), GET_CHUNK):
        out.update((it.id, it) for it in r.get(list(ids[i:i + GET_CHUNK])))
    return out


def report_rows(groups: Sequence[Sequence[str]],
                items: dict[str, StoredItem]) -> list[dict[str, Any]]:
    """One row per item of each group: group number (from 1, largest group first), id, path,
    label (empty when the item went away meanwhile)."""
    rows = []
    for n, group in enumerate(groups, 1):
        for item_id in group:
            it = items.get(item_id)
            rows.append({"group": n, "id": item_id, "path": it.path if it else "",
                         "label": it.label if it else ""})
    return rows


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV (the csv module's quoting: commas, quotes, line breaks and any Unicode
    in ids round-trip through ``csv.DictReader``)."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_json(rows: Sequence[dict[str, Any]], collection: str, radius: int) -> str:
    """The report as JSON: ``{"collection", "radius", "groups": [{"group", "size",
    "items": [{"id", "path", "label"}]}]}``."""
    groups: list[dict[str, Any]] = []
    for row in rows:
        if not groups or groups[-1]["group"] != row["group"]:
            groups.append({"group": row["group"], "size": 0, "items": []})
        groups[-1]["items"].append({k: row[k] for k in ("id", "path", "label")})
        groups[-1]["size"] += 1
    return json.dumps({"collection": collection, "radius": radius, "groups": groups},
                      indent=2, ensure_ascii=False) + "\n"
