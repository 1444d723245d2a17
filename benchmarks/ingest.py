"""Ingestion throughput: the `rsir index` pipeline end to end next to the encoder alone.

    python benchmarks/ingest.py DATA_DIR [--bundle BUNDLE] [--limit N] [--workers W]
    RSIR_DATA=/path/to/nwpu12 python benchmarks/ingest.py --random-projection --no-write

Prints a table and (unless ``--no-write``) replaces the ``ingest`` section of
``docs/benchmarks.md`` with it, the command, the machine and the date.

All stages run in one process on the same images (read once beforehand, so the disk cache is
warm for every stage):

- ``encoder alone``: images decoded and resized beforehand, only ``Encoder.encode_arrays``
  is timed (batches of ``--batch-size``): the ceiling for the pipeline;
- ``decode alone``: decoding + resize/crop in the worker pool, no encoder;
- ``pipeline, no Milvus``: :func:`rsir_sdk.encode_pipeline.iter_codes` (decode pool + encoder);
- ``rsir index``: :func:`rsir_sdk.ingest.ingest` into a fresh Milvus Lite file (listing,
  existence checks, decode, encode, upsert), the command's real work.

The encoder, pipeline and index stages take turns for ``--repeat`` rounds and each keeps its
best time (other jobs on a shared machine slow some rounds). ``efficiency`` = rsir index
images/s ÷ encoder-alone images/s. The bundle is ``--bundle``, else
the newest bundle under ``runs/``, else a random-projection bundle built here (``--size``,
default 224x224 input; a cheap encoder, so the pipeline's overheads dominate).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _common import ROOT, load_average, machine, section, table, versions, write_section

from rsir_sdk import Bundle, Encoder, Retriever, open_archive  # noqa: E402
from rsir_sdk.encode_pipeline import default_workers, iter_codes  # noqa: E402
from rsir_sdk.images import read_image  # noqa: E402
from rsir_sdk.ingest import IngestSummary  # noqa: E402
from rsir_sdk.options import IngestOptions  # noqa: E402
from rsir_sdk.preprocess import prepare  # noqa: E402


def find_bundle(size: int, tmp: Path, random_projection: bool) -> tuple[Path, str]:
    """The newest bundle under ``runs/``, else a random-projection one built in ``tmp``; and a note."""
    runs = [] if random_projection else sorted(
        ROOT.glob("runs/**/manifest.json"), key=lambda p: p.stat().st_mtime)
    for manifest in reversed(runs):
        if (manifest.parent / "model.onnx").is_file():
            return manifest.parent, "newest bundle under runs/"
    sys.path.insert(0, str(ROOT / "tests"))
    from onnx_models import build_random_projection_bundle

    out = tmp / "rp"
    build_random_projection_bundle(out, bits=64, size=size, seed=0)
    return out, f"random-projection bundle built here ({size}x{size} input, 64 bits)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; the dataset folder is required (argument or ``$RSIR_DATA``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", nargs="?", default=os.environ.get("RSIR_DATA"),
                   help="dataset folder (default $RSIR_DATA)")
    p.add_argument("--bundle", default=None)
    p.add_argument("--limit", type=int, default=0, help="use only the first N images (0 = all)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default as rsir index)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--random-projection", action="store_true",
                   help="use a random-projection bundle built here even when runs/ has one")
    p.add_argument("--size", type=int, default=224, help="input size of the built random-projection bundle")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds; best time kept (default 3)")
    p.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = p.parse_args(argv)
    if not args.data:
        p.error("give the dataset folder or set RSIR_DATA")
    return args


@dataclass
class StageTimes:
    """What the stages did: image counts, the decode time and every round's time per stage."""

    images: int  # items listed (after --limit)
    encoded: int  # arrays given to the encoder alone
    piped: int  # codes out of the last pipeline round
    decode_seconds: float
    rounds: dict[str, list[float]]  # "enc", "pipe", "index": seconds per round
    summary: IngestSummary  # the last rsir index round


def decode_alone(items: list, bundle: Bundle, workers: int) -> tuple[np.ndarray, float]:
    """Every image decoded and resized/cropped in a pool of ``workers`` threads, and the time it took."""
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        arrays = np.stack(list(pool.map(
            lambda it: prepare(read_image(it.file).rgb, bundle.preprocess), items)))
    return arrays, time.perf_counter() - t


def encoder_alone(encoder: Encoder, arrays: np.ndarray, batch_size: int) -> float:
    """Seconds for ``Encoder.encode_arrays`` over the decoded images, batch after batch."""
    t = time.perf_counter()
    for start in range(0, len(arrays), batch_size):
        encoder.encode_arrays(arrays[start : start + batch_size])
    return time.perf_counter() - t


def pipeline(encoder: Encoder, items: list, workers: int, batch_size: int) -> tuple[float, int]:
    """Seconds for ``iter_codes`` (decode pool + encoder) over the items, and the codes it gave."""
    t = time.perf_counter()
    done = sum(len(b.items) for b in iter_codes(encoder, items, workers=workers,
                                                 batch_size=batch_size))
    return time.perf_counter() - t, done


def index(bundle: Bundle, listing, db: Path, workers: int, batch_size: int) -> IngestSummary:
    """``rsir index``'s work into the Milvus Lite file ``db`` (fresh: every image is encoded)."""
    with Retriever(bundle, str(db), "bench", batch_size=batch_size) as r:
        return r.index(listing, IngestOptions(workers=workers, batch_size=batch_size))


def measure_stages(bundle: Bundle, listing, workers: int, args: argparse.Namespace,
                   tmp: Path) -> StageTimes:
    """Decode once, then encoder, pipeline and index take turns for ``args.repeat`` rounds."""
    encoder = Encoder(bundle, batch_size=args.batch_size)
    items = listing.items
    for it in items:  # warm the disk cache for every stage alike
        it.file.read_bytes()
    arrays, t_decode = decode_alone(items, bundle, workers)
    encoder.encode_arrays(arrays[: args.batch_size])  # warm-up (session init, allocations)
    # the stages take turns, round after round, and each keeps its best time: on a shared
    # machine, other jobs slow some rounds, and interleaving exposes every stage alike
    times: dict[str, list[float]] = {"enc": [], "pipe": [], "index": []}
    for r in range(args.repeat):
        times["enc"].append(encoder_alone(encoder, arrays, args.batch_size))
        t_pipe, done = pipeline(encoder, items, workers, args.batch_size)
        times["pipe"].append(t_pipe)
        # a fresh Milvus Lite file each round: every image is encoded
        summary = index(bundle, listing, tmp / f"bench{r}.db", workers, args.batch_size)
        times["index"].append(summary.seconds)
        print(f"round {r + 1}/{args.repeat}: encoder {len(arrays) / times['enc'][-1]:.1f}, "
              f"pipeline {done / t_pipe:.1f}, rsir index {summary.images_per_second:.1f} "
              f"images/s", file=sys.stderr, flush=True)
    return StageTimes(len(items), len(arrays), done, t_decode, times, summary)


def report(st: StageTimes, args: argparse.Namespace, workers: int) -> str:
    """The stage table and the paragraph under it (best times, efficiency, the setup)."""
    t_encode, t_pipe, t_index = (min(st.rounds[k]) for k in ("enc", "pipe", "index"))
    summary, n = st.summary, st.images
    enc_rate = st.encoded / t_encode
    dec_rate = n / st.decode_seconds
    index_rate = summary.indexed / t_index
    shared = 1.0 / (1.0 / enc_rate + 1.0 / dec_rate)

    def spread(key: str, count: int) -> str:
        rates = sorted(count / t for t in st.rounds[key])
        return f"{rates[0]:.1f}–{rates[-1]:.1f}"

    stages = [
        ("encoder alone", st.encoded, t_encode, spread("enc", st.encoded)),
        ("decode alone (thread pool)", n, st.decode_seconds, "-"),
        ("pipeline, no Milvus (iter_codes)", st.piped, t_pipe, spread("pipe", st.piped)),
        ("rsir index into Milvus Lite (ingest)", summary.indexed, t_index,
         spread("index", summary.indexed)),
    ]
    rows = [[name, count, sec, count / sec, rng, f"{count / sec / enc_rate:.0%}"]
            for name, count, sec, rng in stages]
    body = table(["stage", "images", "best s", "images/s", "range over rounds",
                  "vs encoder alone"], rows)
    body += (
        f"\n\nBest of {args.repeat} interleaved rounds per stage. "
        f"Pipeline efficiency (rsir index ÷ encoder alone): "
        f"**{index_rate / enc_rate:.0%}**. Decoding and encoding share the same "
        f"{os.cpu_count()} cores: without any overlap they would give {shared:.1f} images/s "
        f"(1 / (1/encode + 1/decode)); rsir index reaches {index_rate / shared:.0%} of that. "
        f"Dataset {Path(args.data).name} ({n} images, disk cache warm), {workers} decoding "
        f"threads, encoder batch {args.batch_size}, upserts of 512 rows."
    )
    if summary.failed:
        body += f" {len(summary.failed)} images failed: {summary.reasons(3)}."
    return body


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load0 = load_average()
    workers = args.workers or default_workers()

    with tempfile.TemporaryDirectory(prefix="rsir-bench-") as tmp:
        tmp = Path(tmp)
        if args.bundle:
            bundle_path, origin = Path(args.bundle), "--bundle"
        else:
            bundle_path, origin = find_bundle(args.size, tmp, args.random_projection)
        bundle = Bundle.load(bundle_path)
        listing = open_archive(args.data, label_from="top")
        if args.limit:
            listing.items = listing.items[: args.limit]
        body = report(measure_stages(bundle, listing, workers, args, tmp), args, workers)
        meta = machine({
            "bundle": f"{bundle.method} {bundle.bits} bits, {bundle.input_height}x"
                      f"{bundle.input_width} input, encoder {bundle.encoder_id} ({origin})",
            "versions": versions("onnxruntime", "pymilvus", "milvus-lite", "pillow", "numpy"),
        })
        print(body)
        if not args.no_write:
            text = section("ingest", "Ingestion: rsir index vs the encoder alone "
                           "(`benchmarks/ingest.py`)", body, meta, (load0, load_average()))
            print(f"\nwrote {write_section('ingest', text)}", file=sys.stderr)
    return 0

if __name__ == "__main__":
    sys.exit(main())
