"""The figures ``benchmarks/ray_ingest.py`` measures and the report made of them: the table of
runs, the table of Ray's costs and the paragraph saying how they were measured.

Kept apart from the runs so that each file reads in one sitting; nothing here starts or times
anything.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from _common import table


@dataclass
class Figures:
    """What the runs measured (seconds, MB), in the order they ran; the report is made of these."""

    n: int  # images of a full run
    small: int  # images of a small run: one actor call per worker
    local_times: list[float]  # the local engine: the first run, then one per round
    cold_s: float  # engine="ray" with Ray started and stopped by the call
    cold_peak_rss: float  # its Ray processes' peak RSS and PSS sums
    cold_peak_pss: float
    init_s: float  # ray.init of the warm local cluster
    idle: dict[str, Any]  # that cluster's memory while idle (ray_memory)
    first_s: float  # the first Ray execution on it (small images)
    small_times: list[float]  # Ray, small images, one per round
    warm_times: list[float]  # Ray, all images, one per round
    warm_peak_rss: float  # Ray's peak RSS and PSS sums and process count on the warm cluster
    warm_peak_pss: float
    warm_peak_procs: int
    driver_ray_imported: float  # this process' RSS after `import ray`
    driver_after_init: float  # ... after ray.init
    driver_end: float  # ... after the runs

    @property
    def t_local(self) -> float:
        return min(self.local_times)

    @property
    def t_small(self) -> float:
        return min(self.small_times)

    @property
    def t_warm(self) -> float:
        return min(self.warm_times)

    @property
    def per_image(self) -> float:
        """Slope of the line through the best small and full Ray runs: seconds per image."""
        return (self.t_warm - self.t_small) / (self.n - self.small)

    @property
    def fixed(self) -> float:
        """Intercept of that line: seconds of one Ray Data execution with no image."""
        return self.t_small - self.small * self.per_image



RUNS_HEAD = ["run", "images", "runs", "best wall s", "images/s", "range images/s",
             "speed vs local", "peak Ray RSS MB", "peak Ray PSS MB"]


def spread(times: list[float], count: int) -> str:
    """'slowest–fastest' images/s of several runs of ``count`` images ('-' for one run)."""
    return f"{count / max(times):.1f}–{count / min(times):.1f}" if len(times) > 1 else "-"


def runs_table(args: argparse.Namespace, fig: Figures) -> str:
    """The table of runs: best wall time, speed and memory peaks of each engine and size."""
    n, small, t_local = fig.n, fig.small, fig.t_local
    rows: list[list[Any]] = [
        ["`engine=\"local\"` (threads + one onnxruntime session)", n, len(fig.local_times),
         t_local, n / t_local, spread(fig.local_times, n), "1.00x", "-", "-"],
        [f"`engine=\"ray\"`, {args.workers} workers, Ray started and stopped by the call "
         f"(`rsir index --engine ray`)", n, 1, fig.cold_s, n / fig.cold_s, "-",
         f"{t_local / fig.cold_s:.2f}x", fig.cold_peak_rss, fig.cold_peak_pss],
        [f"`engine=\"ray\"`, {args.workers} workers, on a running local Ray", n,
         len(fig.warm_times), fig.t_warm, n / fig.t_warm, spread(fig.warm_times, n),
         f"{t_local / fig.t_warm:.2f}x", fig.warm_peak_rss, fig.warm_peak_pss],
        [f"the same, {small} images (one actor call of {args.batch_size} rows per worker)",
         small, len(fig.small_times), fig.t_small, small / fig.t_small,
         spread(fig.small_times, small), "-", "-", "-"],
        [f"the same, {small} images, first execution after `ray.init`", small, 1, fig.first_s,
         small / fig.first_s, "-", "-", "-", "-"],
    ]
    return table(RUNS_HEAD, rows)


def costs_table(args: argparse.Namespace, fig: Figures, driver_before: float) -> str:
    """The table of Ray's costs: start, idle and peak memory, the driver's memory, the fixed and
    per-image cost of one execution, the first execution's and the cold call's extra time."""
    idle, per_image = fig.idle, fig.per_image
    names = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(idle["names"].items()))
    return table(["Ray cost", "value"], [
        [f"`ray.init(num_cpus={args.workers})` of a local cluster (no dashboard)",
         f"{fig.init_s:.2f} s"],
        ["idle local cluster: processes", f"{idle['procs']} ({names})"],
        ["idle local cluster: RSS sum / PSS sum", f"{idle['rss']:.0f} MB / {idle['pss']:.0f} MB"],
        ["peak while indexing on it: RSS sum / PSS sum",
         f"{fig.warm_peak_rss:.0f} MB / {fig.warm_peak_pss:.0f} MB ({fig.warm_peak_procs} processes)"],
        ["this process (driver): before `import ray` / after it / after the runs",
         f"{driver_before:.0f} / {fig.driver_ray_imported:.0f} / {fig.driver_end:.0f} MB "
         f"(after ray.init {fig.driver_after_init:.0f} MB)"],
        ["fixed cost of one Ray Data execution on a running cluster (actor pool, one "
         "onnxruntime session per actor, planning)",
         f"{fig.fixed:.2f} s" if per_image > 0 else "n/a (the runs were too noisy for a line)"],
        [f"cost per further image on Ray ({args.workers} actors)",
         f"{per_image * 1000:.1f} ms ({1 / per_image:.1f} images/s); local engine: "
         f"{fig.t_local / fig.n * 1000:.1f} ms" if per_image > 0 else "n/a"],
        [f"first execution after `ray.init` ({fig.small} images) minus the best later one",
         f"{fig.first_s - fig.t_small:.1f} s"],
        ["starting and stopping Ray inside the call (the cold run minus the best warm one)",
         f"{fig.cold_s - fig.t_warm:.1f} s"],
    ])


def method_text(args: argparse.Namespace, fig: Figures, origin: str) -> str:
    """The paragraph under the tables: the images, what each run times, the order, the checks."""
    n, small = fig.n, fig.small
    return (
        f"{n:,} images ({origin}), each run into a fresh collection of one local Milvus "
        f"2.3.5 server through `Retriever.index` (wall time of the call: listing, existence "
        f"checks, decode, encode, inserts of 512 rows); encoder batch and actor batch "
        f"{args.batch_size}. The local engine uses decode threads and one onnxruntime session "
        f"with all {os.cpu_count()} cores' threads, opened with the `Retriever` (outside the "
        f"timing); Ray runs {args.workers} actors of 1 CPU and 1 onnxruntime thread each, "
        f"their sessions opened inside each execution, and writes from the driver. Order: "
        f"local, Ray cold, `ray.init`, the first Ray execution, then {args.repeat} "
        f"round{'s' if args.repeat > 1 else ''} of local, Ray {small} images, Ray {n:,} images "
        f"(best time of each kept; other jobs slow some rounds). Every Ray collection holds "
        f"exactly the ids and codes of the local one (checked). Fixed cost and per-image cost: "
        f"the line through the {small}-image and {n:,}-image runs on the running cluster "
        f"(t = fixed + n x per-image). Memory from /proc: Ray's processes are those started "
        f"under the benchmark, less the Milvus server; RSS counts shared pages (libraries, "
        f"the object store) once per process, PSS splits them; peaks sampled every 0.2 s.\n"
    )
