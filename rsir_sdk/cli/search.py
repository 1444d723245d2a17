"""``rsir search``: search a collection with one image; a table, JSON, or an HTML gallery."""

from __future__ import annotations

import argparse
import unicodedata
from typing import Any, Sequence

from ..errors import RsirError
from ..geo import BBox, Near, Period
from ..hits import SEARCH_MODES, hit_to_json
from ..images import DEFAULT_URL_TIMEOUT
from ..options import IndexOptions
from ..retriever import Hit, Retriever
from .common import (
    EXIT_OK,
    K_TYPE,
    RADIUS_TYPE,
    SECONDS_TYPE,
    UsageError,
    add_raster_args,
    add_store_args,
    filter_arg,
    json_object,
    print_json,
    raster_rule,
    terminal_text,
    warn,
)


def add_parser(sub: Any) -> None:
    """Register ``rsir search``."""
    p = sub.add_parser("search", help="search a collection with an image")
    p.add_argument("bundle")
    p.add_argument("image", nargs="+",
                   help="image path or http(s) URL; several: one hit list each, searched as "
                        "one batch (Retriever.search_batch)")
    p.add_argument("-k", type=K_TYPE, default=10, help="number of hits, 1..16384 (default 10)")
    p.add_argument("--filter", default=None,
                   help='JSON object, e.g. \'{"label": "forest"}\' (list = any of), or a Milvus '
                        'expression, e.g. \'label == "forest"\'')
    p.add_argument("--radius", type=RADIUS_TYPE, default=None,
                   help="only hits within this Hamming distance (inclusive)")
    p.add_argument("--bbox", default=None, metavar="W,S,E,N",
                   help="only items whose footprint meets this lon/lat box (degrees, inclusive; "
                        "W > E crosses the antimeridian; write --bbox=-10,40,5,50 when it starts "
                        "with a minus)")
    p.add_argument("--near", default=None, metavar="LON,LAT,METRES",
                   help="only items whose footprint lies within METRES (great-circle) of the point")
    p.add_argument("--time", default=None, metavar="START/END",
                   help="only items whose time lies in the period (ISO 8601, inclusive; '..' or "
                        "an empty side is open, e.g. 2021-06/2021-08 or 2020-01-01/..)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--mode", choices=SEARCH_MODES, default="default",
                   help="default: retrieval-code distance, then fine-code distance (collections "
                        "with fine codes, where near-duplicates of the query, and an item clearly "
                        "nearer than any other, come first), then "
                        "the id digest; appearance: the fine code alone "
                        "(near-duplicates, the same place seen again; --radius then bounds the "
                        "fine distance)")
    g.add_argument("--appearance", dest="mode", action="store_const", const="appearance",
                   help="the same as --mode appearance")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.add_argument("--html", default=None, metavar="OUT.html",
                   help="write a gallery page with the query and its hits as thumbnails")
    p.add_argument("--root", action="append", default=None,
                   help="folder to find images with relative paths in (repeatable; default: the "
                        "archive the bundle records)")
    p.add_argument("--link-images", action="store_true",
                   help="gallery links the image files (relative paths) instead of inlining thumbnails")
    p.add_argument("--search-params", default=None, help='JSON, e.g. \'{"nprobe": 16}\'')
    p.add_argument("--url-timeout", type=SECONDS_TYPE, default=DEFAULT_URL_TIMEOUT,
                   metavar="SECONDS", help="an image URL's whole download: connect, headers and "
                                           "body (default %(default)s)")
    add_store_args(p)
    add_raster_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Search and print; the query is encoded exactly as :meth:`Retriever.search` does."""
    if args.html and len(args.image) > 1:
        raise UsageError("--html draws one query's gallery: give one image")
    filt = filter_arg(args.filter)
    place = place_args(args)
    with Retriever(
        args.bundle, uri=args.uri, collection=args.collection, token=args.token,
        raster_rule=raster_rule(args),
        index_options=IndexOptions(
            search_params=json_object(args.search_params, "--search-params")),
        url_timeout=args.url_timeout,
    ) as r:
        # the URL is the user's own, fetched for them alone: an address on their network is
        # theirs to ask for (the guard against probing internal addresses is for services)
        r.encoder.allow_private_urls = True
        if len(args.image) > 1:
            return _run_batch(args, r, filt, place)
        args.image = args.image[0]
        hits = r.search(args.image, k=args.k, filter=filt, radius=args.radius, **place,
                        mode=args.mode)
        if args.html:
            write_html(args, r, hits)
        if not hits and any(v is not None for v in place.values()):
            explain_no_place(r, place)
    if args.json:
        print_json([{"rank": i, **hit_to_json(h)} for i, h in enumerate(hits, 1)])
        return EXIT_OK
    print(format_hits(hits))
    return EXIT_OK


def _run_batch(args: argparse.Namespace, r: Retriever, filt: Any,
               place: dict[str, Any]) -> int:
    """Several images: one batch (``search_batch``), a hit list each, in the order given;
    with ``--json`` a list of ``{"query", "hits"}``."""
    lists = r.search_batch(args.image, k=args.k, filter=filt, radius=args.radius, **place,
                           mode=args.mode)
    if args.json:
        print_json([{"query": str(img), "hits": [{"rank": i, **hit_to_json(h)}
                                                 for i, h in enumerate(hits, 1)]}
                    for img, hits in zip(args.image, lists)])
        return EXIT_OK
    print("\n\n".join(f"query {_printable(str(img))}\n{format_hits(hits)}"
                      for img, hits in zip(args.image, lists)))
    return EXIT_OK


def place_args(args: argparse.Namespace) -> dict[str, Any]:
    """``--bbox``/``--near``/``--time`` checked before anything is opened (one line, exit 2),
    as the keywords of :meth:`Retriever.search`."""
    out = {"bbox": None if args.bbox is None else BBox.parse(args.bbox, "--bbox"),
           "near": None if args.near is None else Near.parse(args.near, "--near"),
           "time": None if args.time is None else Period.parse(args.time, "--time")}
    return out


def write_html(args: argparse.Namespace, r: Retriever, hits: Sequence[Hit]) -> None:
    """The ``--html`` gallery; warns when hits' images cannot be found."""
    from ..gallery import resolve_image, write_gallery

    roots = list(args.root or [])
    if r.bundle.archive_root:
        roots.append(r.bundle.archive_root)
    try:
        out = write_gallery(
            args.html, args.image, hits, roots=roots, embed=not args.link_images,
            rule=r.raster_rule, details={"collection": r.collection, "uri": r.store.display_uri,
                                         "encoder": r.bundle.encoder_id, "k": args.k},
        )
    except OSError as exc:
        raise RsirError(f"cannot write the gallery {args.html}: {exc.strerror or exc}") from None
    def image_of(hit: Hit, where: list) -> Any:
        return resolve_image(hit.path, where) or resolve_image(hit.id, where)

    # hits the user's own --root (or the stored path) does not find: in the training archive, or not at all
    elsewhere = [h for h in hits if image_of(h, list(args.root or [])) is None]
    missing = sum(1 for h in elsewhere if image_of(h, roots) is None)
    borrowed = len(elsewhere) - missing
    warn(f"wrote {out} ({len(hits)} hits)")
    if missing:
        warn(f"{missing} of {len(hits)} hit images were not found: give the archive folder "
             f"with --root DIR")
    if borrowed:  # same relative names in the training archive need not be the same images
        warn(f"{borrowed} of {len(hits)} hit images were found only under the bundle's "
             f"training archive ({r.bundle.archive_root}): if this collection holds another "
             f"archive, give its folder with --root DIR")


def explain_no_place(r: Retriever, place: dict[str, Any]) -> None:
    """After a place or period search found nothing: how many items have no footprint (a
    place filter never returns them) or no time (nor a period filter), since "no hits" alone
    reads as "nothing is there"."""
    info = r.info()
    unplaced = info.get("without_footprint")
    if unplaced and (place.get("bbox") is not None or place.get("near") is not None):
        warn(f"{unplaced} of {info['count']} items have no footprint, and a place filter never "
             f"returns them (no georeferencing, or one that could not be read: their metadata's "
             f"footprint_error says why)")
    untimed = info.get("without_time")
    if untimed and place.get("time") is not None:
        warn(f"{untimed} of {info['count']} items have no time, and a period filter never "
             f"returns them (no date tag in the file, and none given when indexed)")


def format_hits(hits: Sequence[Hit]) -> str:
    """A plain-text table of hits: rank, id, distance, (fine distance, when the fine code took
    part in the ranking), label, path. Columns are measured in terminal cells (a CJK character
    takes two, a combining accent none), so names in any script line up."""
    if not hits:
        return "no hits"
    ids = [_printable(h.id) for h in hits]
    labels = [_printable(h.label) for h in hits]
    wid = min(48, max(2, *map(cells, ids)))
    wlab = min(24, max(5, *map(cells, labels)))
    fine = any(h.fine_distance is not None for h in hits)
    head = f"{'rank':>4}  {'id':{wid}s}  {'distance':>8}  "
    lines = [head + ("    fine  " if fine else "") + f"{'label':{wlab}s}  path"]
    for i, h in enumerate(hits, 1):
        shown = "-" if h.fine_distance is None else h.fine_distance
        lines.append(f"{i:>4}  {pad(ids[i - 1], wid)}  {h.distance:>8}  "
                     + (f"{shown:>6}  " if fine else "")
                     + f"{pad(cut(labels[i - 1], wlab), wlab)}  {_printable(h.path)}")
    return "\n".join(lines)


def cells(text: str) -> int:
    """Terminal cells ``text`` takes: East Asian wide and full-width characters two, combining
    marks none, others one."""
    return sum(0 if unicodedata.combining(ch) else
               2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def pad(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` cells (a longer text is left as it is)."""
    return text + " " * max(0, width - cells(text))


def cut(text: str, width: int) -> str:
    """The longest start of ``text`` that fits in ``width`` cells."""
    out, used = [], 0
    for ch in text:
        used += cells(ch)
        if used > width:
            break
        out.append(ch)
    return "".join(out)


def _printable(text: str) -> str:
    """``text`` on one line as :func:`~rsir_sdk.cli.common.terminal_text` shows it, with
    backslashes doubled first so that an escape is never mistaken for a name's own characters
    (``new\\\\nline.jpg`` holds a backslash; ``new\\nline.jpg`` a line break)."""
    return terminal_text(text.replace("\\", "\\\\"))

