"""What Ray costs and gives for ingestion: `rsir index --engine ray` next to the local engine.

    python benchmarks/ray_ingest.py --bundle BUNDLE                 # 1,000 images, writes its section
    python benchmarks/ray_ingest.py --bundle BUNDLE --data DIR --images 5000 --no-write

``--bundle`` is a real bundle folder (``manifest.json`` + ``model.onnx``): ``rsir quickstart``
writes one to ``quickstart-out/bundle`` (``--out`` changes the folder; it needs the training
package, ``pip install -e ./export``), ``rsir train ahcl --data DIR --bits 16 --out BUNDLE``
another; the figures in ``docs/benchmarks.md`` were made with a 16-bit AHCL bundle
(EfficientNet-Lite0, 224x224 input) trained on EuroSAT.

The images: ``--data DIR`` (a folder of class folders; its first ``--images`` files), else
``--images`` scenes made from the EuroSAT sample the project ships
(``export/rsir_train/sample/eurosat``, 200 real 64x64 scenes): each re-saved as PNG under a temp
folder in up to eight orientations (then as copies), every file a unique name and id.

On one local Milvus 2.3.5 server (:func:`testing.store_local_server.local_server`), each run into
a fresh collection through the public API (``Retriever.index``), one after the other:

1. ``engine="local"``: decode threads + one onnxruntime session in this process;
2. ``engine="ray"``, ``workers=2`` with no Ray running: what ``rsir index --engine ray`` does
   (starts a local Ray with 2 CPUs, runs, shuts it down), end to end;
3. ``ray.init(num_cpus=2)`` here, timed (the library's settings: no dashboard, no log
   forwarding); the idle cluster's memory; a first Ray execution of ``small`` = workers x 64
   images (one actor call of 64 rows per actor: the first execution pays more);
4. ``--repeat`` rounds of: local engine, Ray with ``small`` images, Ray with all the images, on
   the running cluster (best time of each kept: other jobs slow some rounds). The line through
   the small and the full Ray runs gives the fixed cost of one Ray Data execution (actor pool,
   one onnxruntime session per actor, planning) and the cost of each further image:
   t(n) = fixed + n x per-image. A cost per actor call is not separated (on one machine it hides
   in the per-image cost).

Memory, from /proc (no psutil): the RSS (and PSS, which counts shared pages once) summed over
Ray's processes (every process started under this one, less the Milvus server's tree) once the
local cluster is up and idle, and the peak while the runs work (sampled every 0.2 s); and this
process' RSS before ``import ray`` and after the runs. Every Ray collection must hold exactly
the ids and codes of the local one (asserted).

Prints a table and (unless ``--no-write``) replaces the ``ray-ingest`` section of
``docs/benchmarks.md``, with the command, machine, date and load averages.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from _common import ROOT, load_average, machine, section, versions, write_section
from _ray_ingest_report import Figures, costs_table, method_text, runs_table
from PIL import Image, ImageOps

from rsir_sdk import MilvusCodeStore, Retriever, open_archive
from rsir_sdk.options import IngestOptions
from testing.store_local_server import local_server

SAMPLE = ROOT / "export" / "rsir_train" / "sample" / "eurosat"
VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "orig": lambda im: im, "mirror": ImageOps.mirror, "flip": ImageOps.flip,
    "rot90": lambda im: im.rotate(90), "rot180": lambda im: im.rotate(180),
    "rot270": lambda im: im.rotate(270),
    "transpose": lambda im: im.transpose(Image.Transpose.TRANSPOSE),
    "transverse": lambda im: im.transpose(Image.Transpose.TRANSVERSE),
}


# ----------------------------------------------------------------------------- images
def make_images(n: int, out: Path) -> Path:
    """``n`` PNG scenes from the shipped sample, unique names, ``out/<class>/<stem>_<variant>.png``."""
    sample = sorted((p, p.parent.name) for p in SAMPLE.glob("*/*.jpg"))
    if not sample:
        raise SystemExit(f"no sample images under {SAMPLE}; give --data DIR")
    made = 0
    copy = 0
    while made < n:
        for name, fn in VARIANTS.items():
            for path, label in sample:
                if made == n:
                    return out
                suffix = name if copy == 0 else f"{name}_c{copy}"
                dst = out / label / f"{path.stem}_{suffix}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                fn(Image.open(path).convert("RGB")).save(dst)
                made += 1
        copy += 1
    return out


# ----------------------------------------------------------------------------- /proc
def _proc_table() -> dict[int, int]:
    """pid -> parent pid of every process readable in /proc."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        out[int(d)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return out


def descendants(root: int, exclude: int | None = None) -> list[int]:
    """Every process under ``root`` (not ``root`` itself), less ``exclude`` and its tree."""
    parent = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid == exclude:
            continue
        out.append(pid)
        todo += children.get(pid, [])
    return out


def rss_pss_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of ``pid`` in MB from /proc/<pid>/smaps_rollup (0, 0 once it is gone)."""
    rss = pss = 0.0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return rss, pss


def self_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ray_memory(server_pid: int) -> dict[str, Any]:
    """RSS and PSS sums (MB) and the names of Ray's processes: every process started under this
    one except the Milvus server and its tree."""
    pids = descendants(os.getpid(), exclude=server_pid)
    rss = pss = 0.0
    names: dict[str, int] = {}
    for pid in pids:
        r, p = rss_pss_mb(pid)
        rss, pss = rss + r, pss + p
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        names[name] = names.get(name, 0) + 1
    return {"rss": rss, "pss": pss, "procs": len(pids), "names": names}


class PeakSampler:
    """Samples :func:`ray_memory` every ``interval`` s in a thread; keeps the peaks."""

    def __init__(self, server_pid: int, interval: float = 0.2):
        self.server_pid, self.interval = server_pid, interval
        self.rss = self.pss = 0.0
        self.procs = 0
        self.driver = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            m = ray_memory(self.server_pid)
            self.rss, self.pss = max(self.rss, m["rss"]), max(self.pss, m["pss"])
            self.procs = max(self.procs, m["procs"])
            self.driver = max(self.driver, self_rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- runs
def say(msg: str) -> None:
    """A timestamped progress line on stderr (stdout carries only the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rows_of(uri: str, collection: str, ids: list[str]) -> dict[str, bytes]:
    """id -> code bytes of ``ids`` in ``collection`` (every id must be there, nothing else)."""
    with MilvusCodeStore(uri, collection, create=False) as s:
        assert s.count() == len(ids), (collection, s.count(), len(ids))
        return {it.id: it.code.tobytes() for it in s.get(ids)}


def prepare_listing(args: argparse.Namespace, tmp: Path) -> tuple[Any, str]:
    """The listing every run indexes (``--data``'s first images, or scenes made from the shipped
    sample under ``tmp``) and a phrase saying where its images come from. Each file is read once
    here so that every engine reads from a warm disk cache."""
    if args.data:
        listing = open_archive(args.data, label_from="parent")
        listing.items = listing.items[: args.images]
        origin = f"{Path(args.data).name}, first {len(listing.items)} images"
    else:
        t0 = time.perf_counter()
        folder = make_images(args.images, tmp / "images")
        listing = open_archive(folder, label_from="parent")
        turns = min(len(VARIANTS), -(-args.images // 200))
        origin = (f"the shipped EuroSAT sample (200 scenes, 64x64) re-saved as PNG in {turns} "
                  f"orientation{'s' if turns > 1 else ''}")
        say(f"{len(listing.items)} images made in {time.perf_counter() - t0:.1f}s")
    n = len(listing.items)
    small = args.workers * args.batch_size  # the small run: one actor call per worker
    if n <= small:
        raise SystemExit(f"need more than {small} images, found {n}")
    for it in listing.items:  # every engine reads from a warm disk cache
        it.file.read_bytes()
    return listing, origin


@dataclass
class Bench:
    """What each timed run needs: the options, the listing, the server and, once the first local
    run is done, its rows (which every Ray collection must equal)."""

    args: argparse.Namespace
    listing: Any
    uri: str
    ids: list[str]
    expected: dict[str, bytes] = field(default_factory=dict)

    def index(self, collection: str, subset: list[Any], engine: str) -> float:
        """Wall seconds of ``Retriever.index`` of ``subset`` into a fresh ``collection`` with
        ``engine`` (every image must be indexed, none may fail)."""
        args = self.args
        part = copy.copy(self.listing)
        part.items = list(subset)
        with Retriever(args.bundle, self.uri, collection, batch_size=args.batch_size) as r:
            t0 = time.perf_counter()
            summary = r.index(part, IngestOptions(engine=engine, workers=args.workers,
                                                  batch_size=args.batch_size))
            wall = time.perf_counter() - t0
        assert summary.indexed == len(subset) and not summary.failed, (
            collection, summary.indexed, summary.reasons(3))
        say(f"{collection}: {len(subset)} images in {wall:.1f}s "
            f"({len(subset) / wall:.1f} images/s)")
        return wall

    def same_rows(self, collection: str) -> None:
        """Assert that ``collection`` holds exactly the ids and codes of the local run."""
        got = rows_of(self.uri, collection, self.ids)
        differ = sum(got[i] != self.expected[i] for i in self.ids)
        assert got == self.expected, (
            f"{collection}: {differ} of {len(self.ids)} codes differ from the local run")


def measure_cold_ray(bench: Bench, server_pid: int) -> tuple[float, PeakSampler, float]:
    """``engine="ray"`` with no Ray running (what ``rsir index --engine ray`` does: Ray started
    and shut down by the call): (wall s, its memory peaks, this process' RSS after ``import ray``)."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # as rsir_sdk.ray_ingest does
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray
    import ray.data  # before the RSS reading: the runs import it

    # Ray Data's notices (e.g. fewer blocks than actors) are not figures
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    driver_ray_imported = self_rss_mb()
    with PeakSampler(server_pid) as cold_peak:
        cold_s = bench.index("bench_ray_cold", bench.listing.items, "ray")
    assert not ray.is_initialized()
    bench.same_rows("bench_ray_cold")
    return cold_s, cold_peak, driver_ray_imported


def start_local_ray(workers: int, server_pid: int) -> tuple[float, dict[str, Any], float]:
    """``ray.init(num_cpus=workers)`` here with the library's settings (no dashboard, no log
    forwarding): (its wall s, the idle cluster's memory, this process' RSS after it)."""
    import ray
    import ray.data

    for name in ("ray", "ray.data", "ray._private", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    init_s = time.perf_counter() - t0
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    say(f"ray.init(num_cpus={workers}) in {init_s:.2f}s")
    time.sleep(5)  # let the prestarted workers come up: the idle cluster's memory
    idle = ray_memory(server_pid)
    driver_after_init = self_rss_mb()
    say(f"idle Ray: {idle['procs']} processes, RSS {idle['rss']:.0f} MB, "
        f"PSS {idle['pss']:.0f} MB: {idle['names']}")
    return init_s, idle, driver_after_init


def measure_warm_rounds(bench: Bench, server_pid: int, small: int, local_times: list[float]
                        ) -> tuple[float, list[float], list[float], PeakSampler]:
    """On the running cluster: the first Ray execution of ``small`` images, then ``--repeat``
    rounds of local, Ray ``small`` and Ray full runs (each round's local time is appended to
    ``local_times``); shuts Ray down. (first s, small run times, full run times, memory peaks)."""
    import ray

    items = bench.listing.items
    small_times: list[float] = []
    warm_times: list[float] = []
    try:
        with PeakSampler(server_pid) as warm_peak:
            # the first execution on a fresh cluster pays more (workers import Ray Data,
            # onnxruntime): reported apart, left out of the line below
            first_s = bench.index("bench_ray_first", items[:small], "ray")
            for r in range(1, max(1, bench.args.repeat) + 1):
                local_times.append(bench.index(f"bench_local{r}", items, "local"))
                small_times.append(bench.index(f"bench_ray_small{r}", items[:small], "ray"))
                warm_times.append(bench.index(f"bench_ray_warm{r}", items, "ray"))
                bench.same_rows(f"bench_ray_warm{r}")
        assert ray.is_initialized()  # the library left the cluster it did not start alone
    finally:
        ray.shutdown()
    return first_s, small_times, warm_times, warm_peak


def measure(args: argparse.Namespace, listing: Any, tmp: Path) -> Figures:
    """Every run, in order, on one local Milvus server under ``tmp``: local; Ray cold; ``ray.init``
    and the idle cluster; the first Ray execution and the rounds on it."""
    items = listing.items
    ids = sorted(it.id for it in items)
    small = args.workers * args.batch_size
    with local_server(tmp / "milvus") as srv:
        say(f"Milvus server up in {srv.started_s:.1f}s at {srv.uri}")
        bench = Bench(args, listing, srv.uri, ids)
        # 1. local engine (again in each round below; the best time is kept)
        local_times = [bench.index("bench_local0", items, "local")]
        bench.expected = rows_of(srv.uri, "bench_local0", ids)
        # 2. engine="ray", Ray not running: started and shut down by the call (rsir index)
        cold_s, cold_peak, driver_ray_imported = measure_cold_ray(bench, srv.pid)
        # 3. a warm local cluster: ray.init timed, idle memory, then the runs on it
        init_s, idle, driver_after_init = start_local_ray(args.workers, srv.pid)
        first_s, small_times, warm_times, warm_peak = measure_warm_rounds(
            bench, srv.pid, small, local_times)
        driver_end = self_rss_mb()
    return Figures(
        n=len(items), small=small, local_times=local_times, cold_s=cold_s,
        cold_peak_rss=cold_peak.rss, cold_peak_pss=cold_peak.pss, init_s=init_s, idle=idle,
        first_s=first_s, small_times=small_times, warm_times=warm_times,
        warm_peak_rss=warm_peak.rss, warm_peak_pss=warm_peak.pss, warm_peak_procs=warm_peak.procs,
        driver_ray_imported=driver_ray_imported, driver_after_init=driver_after_init,
        driver_end=driver_end)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--bundle", required=True,
                   help="bundle folder (rsir quickstart writes quickstart-out/bundle)")
    p.add_argument("--data", help="dataset folder of class folders (default: made from the "
                                  "shipped EuroSAT sample)")
    p.add_argument("--images", type=int, default=1000, help="images per full run (default 1000)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors and Ray CPUs (default 2)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="rows per actor call and encoder batch of both engines (default 64)")
    p.add_argument("--repeat", type=int, default=2,
                   help="runs of workers x batch-size images on the warm cluster; best kept "
                        "(default 2)")
    p.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.images <= args.workers * args.batch_size:
        p.error("--images must be above --workers x --batch-size")
    load0 = load_average()
    driver_before = self_rss_mb()
    tmp = Path(tempfile.mkdtemp(prefix="rsir-bench-ray-"))
    try:
        return run(args, tmp, load0, driver_before)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, load0: str, driver_before: float) -> int:
    """Measure, print the report and (unless ``--no-write``) replace its docs section."""
    listing, origin = prepare_listing(args, tmp)
    fig = measure(args, listing, tmp)
    body = runs_table(args, fig)
    body += "\n\n" + costs_table(args, fig, driver_before)
    body += "\n\n" + method_text(args, fig, origin)
    print(body)
    meta = machine({
        "bundle": f"{Path(args.bundle).name}: {bundle_desc(args.bundle)}",
        "versions": versions("ray", "onnxruntime", "pymilvus", "milvus", "pillow", "numpy"),
    })
    if not args.no_write:
        doc = write_section("ray-ingest", section(
            "ray-ingest", "Ingestion on Ray vs the local engine (`benchmarks/ray_ingest.py`)",
            body, meta, (load0, load_average())))
        print(f"written to {doc}", file=sys.stderr)
    return 0


def bundle_desc(path: str) -> str:
    from rsir_sdk import Bundle

    b = Bundle.load(path)
    backbone = (b.manifest.get("training") or {}).get("backbone", "?")
    return (f"{b.method} {b.bits} bits, {backbone}, {b.input_height}x{b.input_width} input, "
            f"encoder {b.encoder_id}")


if __name__ == "__main__":
    sys.exit(main())
