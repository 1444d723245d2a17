"""``rsir index``: put an archive (or a bundle's learned codes) into a collection; resumable."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

from ..archive import IMAGE_EXTENSIONS
from ..decoding import allow_pixels
from ..failures import read_report
from ..ingest import IngestInterrupted, IngestProgress, IngestSummary
from ..options import IndexOptions, IngestOptions, RayOptions
from ..retriever import Retriever
from .common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    POSITIVE,
    ProgressBar,
    UsageError,
    add_raster_args,
    add_store_args,
    ignore_more_interrupts,
    int_in,
    json_object,
    print_json,
    raster_rule,
    warn,
)


def add_parser(sub: Any) -> None:
    """Register ``rsir index``."""
    p = sub.add_parser(
        "index", help="encode an archive (folder or CSV) into a collection; resumable",
        description="Encode every image of ARCHIVE and write its code. Re-running skips the "
                    "ids already in the collection, so an interrupted run finishes the rest. "
                    "Images that fail are listed in the report file (exit status 3).",
    )
    p.add_argument("bundle")
    p.add_argument("archive", nargs="?", help="folder of images (walked recursively) or a .csv manifest")
    p.add_argument("--learned", action="store_true",
                   help="index the bundle's learned database codes (AHCL) instead of an archive")
    add_store_args(p)
    g = p.add_argument_group("archive")
    g.add_argument("--label-from", choices=["none", "parent", "top"], default="none",
                   help="folder archives: label = the folder holding the file (parent) or the "
                        "first folder under the archive (top); default none")
    g.add_argument("--extensions", default=None,
                   help="folder archives: comma-separated file extensions to index "
                        f"(default {','.join(IMAGE_EXTENSIONS)})")
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
    g.add_argument("--prune", action="store_true",
                   help="after the run, delete every item whose id this archive does not list "
                        "(files removed or renamed since they were indexed; items written "
                        "another way too); without it they stay, counted in the summary")
    g = p.add_argument_group("performance")
    g.add_argument("--workers", type=POSITIVE, default=None, help="decoding threads (default: CPUs, 2..8)")
    g.add_argument("--threads", type=POSITIVE, default=None, help="onnxruntime threads (default: all cores; with --engine ray, threads per "
                        "actor, default 1)")
    g.add_argument("--batch-size", type=POSITIVE, default=32, help="images per encoder call (default 32)")
    g.add_argument("--upsert-batch", type=POSITIVE, default=512, help="rows per Milvus write (default 512)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="where images are decoded and encoded: this process (default) or Ray "
                        "actors (the distributed extra; listing, resuming and writes stay here)")
    g.add_argument("--address", default=None,
                   help="--engine ray: the Ray cluster (e.g. auto, ray://head:10001); default: "
                        "RAY_ADDRESS if set, else (or 'local') a local Ray with --workers x "
                        "--threads CPUs")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="--engine ray: GPUs per actor (default 0: CPU actors; 0.5 shares a GPU "
                        "between two); each actor runs --threads onnxruntime threads (default 1)")
    g.add_argument("--max-pixels", type=int_in(0, None, "the pixel limit (0: none)"), default=100_000_000,
                   help="refuse images with more pixels (default 100000000; 0 = no limit)")
    g.add_argument("--index-type", default=None, type=str.upper,
                   choices=["AUTO", "BIN_FLAT", "BIN_IVF_FLAT", "HNSW"],
                   help="index of a new server collection: auto (default: BIN_FLAT, or "
                        "BIN_IVF_FLAT with a calibrated nprobe when large and structured), "
                        "BIN_FLAT (exact), BIN_IVF_FLAT or HNSW; Milvus Lite has BIN_FLAT only")
    g.add_argument("--index-params", default=None, help='JSON, e.g. \'{"nlist": 1024}\'')
    g = p.add_argument_group("Milvus server")
    g.add_argument("--bulk", metavar="DIR", default=None,
                   help="load through Milvus' bulk import, staging numpy files in DIR (a folder "
                        "the Milvus server reads at the same path: a local server); resumable "
                        "through a journal in DIR; for large first loads")
    g.add_argument("--prepare", choices=["auto", "always", "never"], default="auto",
                   help="leave a server collection indexed and loaded at the end, so the "
                        "first search is fast (auto: after a bulk load or 10000 rows); every "
                        "run that wrote rows ends flushed (durable) whatever this says")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_raster_args(p)
    p.set_defaults(func=run, late_positional="archive")  # ARCHIVE may follow the options


def run(args: argparse.Namespace) -> int:
    """Index an archive or the bundle's learned codes; exit 0, 3 (some failed) or 130."""
    if args.learned and args.archive:
        raise UsageError("give either an ARCHIVE to encode or --learned, not both")
    if not args.learned and not args.archive:
        raise UsageError("give the ARCHIVE to index (a folder or a .csv manifest), or --learned "
                         "for the bundle's learned database codes")
    if args.bulk and args.learned:
        raise UsageError("--bulk loads archives; --learned codes are written with inserts")
    if args.bulk and args.force:
        raise UsageError("--bulk adds new ids only; it cannot re-encode ids already present "
                         "(--force): index without --bulk, or drop the collection first")
    options = ingest_options(args)  # a bad value stops here, before the collection is opened
    allow_pixels(options.max_pixels)  # --max-pixels above Pillow's own guard (or 0) is honoured
    index_options = IndexOptions(index_type=args.index_type,
                                 index_params=json_object(args.index_params, "--index-params"))
    with Retriever(
        args.bundle, uri=args.uri, collection=args.collection, token=args.token,
        raster_rule=raster_rule(args), threads=args.threads, batch_size=args.batch_size,
        index_options=index_options,
    ) as r:
        on_prepare = None if args.no_progress else _prepare_printer()
        if args.learned:
            return _index_learned(r, args.json)
        report_path = args.report or f"{r.collection}-failed.csv"
        bar = None if args.no_progress else ProgressBar(f"indexing into {r.collection}")

        def progress(state: IngestProgress) -> None:
            if bar is not None:
                bar.update(state.done, state.total, indexed=state.indexed,
                           skipped=state.skipped, failed=state.failed)

        # with --json, stdout holds the JSON alone: anything a dependency prints there while
        # the run goes (Ray's "(raylet) A worker died ..." notices) goes to stderr instead
        quiet_stdout = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
        try:
            with quiet_stdout:
                summary = r.index(args.archive, options, report=report_path, progress=progress,
                                  on_prepare=on_prepare)
        except IngestInterrupted as exc:
            ignore_more_interrupts()
            if bar is not None:
                bar.close()
            warn(f"\nrsir index: {exc}")
            return EXIT_INTERRUPTED
        finally:
            if bar is not None:
                bar.close()
        if summary.total == 0 and args.retry_failed:
            warn(f"rsir index: none of the images listed in {args.retry_failed} is in "
                 f"{args.archive}: nothing to retry (the report is kept)")
            return EXIT_OK
        if summary.total == 0:   # "indexed 0 images" would read as success
            seen = ("1 other file was" if summary.ignored == 1
                    else f"{summary.ignored} other files were")
            raise UsageError(
                f"{args.archive} holds no image: nothing indexed (images are the files ending "
                f"in {', '.join(options.extensions)}; {seen} seen)")
        count = r.count()
        rule = r.raster_rule
    if args.json:
        out = summary.as_dict()
        out.update({"count": count, "raster_rule": rule.describe(),
                    "report": summary.report if summary.failed else None})
        print_json(out)
    else:
        print(summary_text(summary, count, rule.describe() if not rule.is_default else None))
    return EXIT_PARTIAL if summary.failed else EXIT_OK


def ingest_options(args: argparse.Namespace) -> IngestOptions:
    """The :class:`~rsir_sdk.options.IngestOptions` of ``rsir index``'s arguments."""
    if args.prune and args.retry_failed:
        raise UsageError("--prune deletes what a whole archive does not list; a --retry-failed "
                         "run of some images cannot say that: prune on a full run")
    if args.retry_failed and not os.path.isfile(args.retry_failed):
        raise UsageError(f"--retry-failed {args.retry_failed}: no such report file (nothing "
                         f"failed last time?)")
    if args.gpus_per_worker and args.engine != "ray":
        raise UsageError("--gpus-per-worker is for --engine ray (the local engine uses the "
                         "GPU onnxruntime finds)")
    only = frozenset(f.id for f in read_report(args.retry_failed)) if args.retry_failed else None
    extensions = (tuple(e.strip() for e in args.extensions.split(",") if e.strip())
                  if args.extensions else IMAGE_EXTENSIONS)
    return IngestOptions(
        label_from=args.label_from, root=args.root, path_column=args.path_column,
        id_column=args.id_column, label_column=args.label_column, extensions=extensions,
        skip_existing=not args.force, only_ids=only, relative_paths=args.relative_paths,
        prune=args.prune,
        engine=args.engine, address=args.address, workers=args.workers,
        batch_size=args.batch_size, upsert_batch=args.upsert_batch,
        max_pixels=args.max_pixels or None, bulk_dir=args.bulk, prepare=args.prepare,
        ray=RayOptions(threads_per_worker=args.threads or 1,
                       gpus_per_worker=args.gpus_per_worker),
    )


def summary_text(summary: IngestSummary, count: int, rule: str | None) -> str:
    """The plain-text summary ``rsir index`` prints."""
    lines = [
        f"indexed  {summary.indexed:>9} images into {summary.collection} at {summary.uri} "
        f"({summary.seconds:.1f}s, {summary.images_per_second:.1f} images/s)",
        f"skipped  {summary.skipped:>9} already present"
        + (" (kept as stored: --force re-encodes them and rewrites labels and paths)"
           if summary.skipped else ""),
    ]
    if summary.failed:
        lines.append(f"failed   {len(summary.failed):>9} not indexed, listed in {summary.report} "
                     f"(retry: --retry-failed {summary.report})")
        top = summary.reasons()
        for reason, n in top:
            lines.append(f"         {n:>9}  {shorten(reason)}")
        rest = len(summary.failed) - sum(n for _, n in top)
        if rest:
            lines.append(f"         {rest:>9}  for other reasons (all in {summary.report})")
    else:
        lines.append(f"failed   {0:>9}")
    if summary.ignored:
        shown = ", ".join(summary.ignored_examples[:3]) + (" ..." if summary.ignored > 3 else "")
        files = "file that is not an image" if summary.ignored == 1 else "files that are not images"
        lines.append(f"ignored  {summary.ignored:>9} {files} by extension ({shown})")
    if summary.stored_elsewhere:
        new, old = summary.stored_elsewhere_examples[0]
        lines.append(f"twice    {summary.stored_elsewhere:>9} indexed again: already stored under "
                     f"other ids (e.g. {new!r} is also {old!r}), so searches return them twice; "
                     f"ids are paths under the archive given: index the same folder each time")
    if summary.unplaced:
        lines.append(f"no place {summary.unplaced:>9} indexed with georeferencing that gave no "
                     f"footprint: place searches never return them")
        lines += _top_reasons(summary.footprint_errors)
    untimed = sum(summary.time_errors.values())
    if untimed:
        lines.append(f"no time  {untimed:>9} indexed with a date tag that is not a date: period "
                     f"searches never return them")
        lines += _top_reasons(summary.time_errors)
    if summary.not_listed:
        lines.append(f"not listed {summary.not_listed:>7} items the collection holds that this "
                     f"archive does not list (files removed or renamed since they were indexed, "
                     f"or written another way): searches still return them; --prune deletes them")
    if summary.pruned:
        lines.append(f"pruned   {summary.pruned:>9} items this archive no longer lists, deleted")
    if rule:
        lines.append(f"raster rule  {rule}")
    if summary.bulk:
        b = summary.bulk
        lines.append(f"bulk load    {b.get('chunks', 0)} import tasks, files written in "
                     f"{b.get('write_s', 0):.1f}s, imported in {b.get('import_s', 0):.1f}s")
    if summary.prepare:
        lines.append("ready to search  " + prepare_text(summary.prepare))
    lines.append(f"the collection holds {count} items")
    return "\n".join(lines)


def _top_reasons(reasons: dict[str, int], shown: int = 3) -> list[str]:
    """The commonest ``shown`` reasons as summary lines, and a line for the rest (they were
    cut without a word: 4 reasons printed as 3; ``--json`` lists them all)."""
    ranked = sorted(reasons.items(), key=lambda kv: -kv[1])
    lines = [f"         {n:>9}  {shorten(reason)}" for reason, n in ranked[:shown]]
    if len(ranked) > shown:
        rest = sum(n for _, n in ranked[shown:])
        lines.append(f"         {rest:>9}  {len(ranked) - shown} other reason(s): --json lists them")
    return lines


def prepare_text(p: dict[str, Any]) -> str:
    """One line on what ``prepare_for_search`` did."""
    text = (f"flush {p.get('flush_s', 0):.1f}s, index {p.get('index_s', 0):.1f}s, sealed "
            f"segments served {p.get('serving_s', 0):.1f}s; index {p.get('index_type')}")
    cal = p.get("calibration")
    if cal and p.get("index_type") == "BIN_IVF_FLAT":
        text += (f" (nlist {cal['nlist']}, nprobe {cal['nprobe']}: recall@{cal['k']} "
                 f"{cal['recall']:.3f} against exact search)")
    elif cal and cal.get("nprobe"):
        text += f" (BIN_IVF_FLAT needed nprobe {cal['nprobe']} of {cal['nlist']}: kept exact)"
    companions = p.get("companions")
    if companions:
        text += f"; fine-code companions ready {companions.get('total_s', 0):.1f}s later"
    return text


def _prepare_printer() -> Any:
    """A progress callback for ``prepare_for_search``: one stderr line per step."""
    seen: set[str] = set()

    def show(p: Any) -> None:
        step = p.step.split(":")[0] if p.step.startswith("index-choice") else p.step
        if step not in seen and p.step != "done":
            seen.add(step)
            warn(f"preparing for search: {p.step}")

    return show


def _index_learned(r: Retriever, as_json: bool) -> int:
    """Write the bundle's learned codes (an upsert by id) and say how many were new: a second
    run rewrites the same rows, and the count must not read as if it had added them again."""
    before = r.count()
    n = r.add_learned_codes()
    total = r.count()
    new = max(0, total - before)
    if as_json:
        print_json({"indexed": n, "new": new, "collection": r.collection,
                    "uri": r.store.display_uri, "count": total})
    elif new == n:
        print(f"indexed {n} learned database codes into {r.collection} at "
              f"{r.store.display_uri} ({total} items)")
    else:
        print(f"wrote {n} learned database codes into {r.collection} at {r.store.display_uri}: "
              f"{new} new, {n - new} already there and rewritten ({total} items)")
    return EXIT_OK


def shorten(text: str, width: int = 150) -> str:
    """``text`` cut at a word boundary to at most ``width`` characters, with "..." when cut
    (a reason cut mid-word read as a different word: "indexed into a n")."""
    if len(text) <= width:
        return text
    cut = text[: width - 3].rsplit(" ", 1)[0]
    return (cut if len(cut) > width // 2 else text[: width - 3]) + "..."
