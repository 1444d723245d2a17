"""Result records of trained bundles (docs/results.json): one writer for every method.

A record is one metric of one bundle: what was trained (method, dataset, split, bits, backbone,
seed), the number, and how to reproduce it (the exact command, device, train time, date).
Records are built from a bundle's manifest alone (:func:`records_for_manifest`), so the
training command (``rsir train ahcl|milan ... --results FILE``) and a later report over bundle
folders (``python -m rsir_train.results BUNDLE... --json docs/results.json``) write the same
rows. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from rsir_sdk import staging

__all__ = ["IDENTITY", "METRICS", "append_results", "markdown_table", "records_for_bundle",
           "records_for_manifest", "load_averages", "main", "recipe_of", "schedule_of"]

#: ``training.metrics`` key -> (evaluation protocol, metric name) of its record; protocol
#: ``None`` = the bundle's own (``training.protocol``, e.g. ``ahcl-80-20``)
METRICS: dict[str, tuple[str | None, str]] = {
    "map_query_vs_learned_db": (None, "map"),
    "map_query_vs_encoded_db": (None, "map_encoded_db"),
    "milan_map@20": ("milan", "mAP@20"),
    "ahcl_map": ("ahcl", "mAP"),
    # the same in expectation over the order of tied codes (rsir_sdk.tie_aware)
    "milan_map@20_tie_aware": ("milan", "mAP@20 tie-aware"),
    "ahcl_map_tie_aware": ("ahcl", "mAP tie-aware"),
}
#: two records with these fields equal are the same result (a newer one replaces the older)
IDENTITY = ("method", "protocol", "split", "dataset", "bits", "metric", "iterations", "backbone",
            "seed", "recipe")


def recipe_of(manifest: Mapping[str, Any]) -> str | None:
    """The recipe's name (part of a record's identity): AHCL's schedule (``auto``,
    ``authors``, ...), MiLAN's ``validation`` or ``authors``, ``itq``."""
    t = manifest.get("training") or {}
    h = t.get("hyperparameters") or {}
    if manifest.get("method") == "ahcl":
        return h.get("schedule")
    if manifest.get("method") == "milan":
        return "validation" if t.get("selection") else "authors"
    return manifest.get("method")


def schedule_of(manifest: Mapping[str, Any]) -> str | None:
    """How a bundle was trained, in a few words (the ``schedule`` of its records)."""
    t = manifest.get("training") or {}
    h = t.get("hyperparameters") or {}
    method = manifest.get("method")
    if method == "ahcl" and h.get("schedule"):
        trained = h.get("chosen_schedule") or h["schedule"]
        shape = "cosine" if trained in ("auto", "cosine") else f"step at {h.get('lr_steps')}"
        epochs = (h.get("outer") or 0) * (h.get("inner") or 0)
        text = (f"{h['schedule']}: {epochs} epochs ({h.get('outer')} x {h.get('inner')}), SGD lr "
                f"{h.get('lr')} momentum {h.get('momentum')}, {shape}")
        sel = t.get("selection") or {}
        if not sel:
            return text
        refit = sel.get("refit") or {}
        cut = (f"refit on the whole train side for {refit.get('epochs')} epochs "
               f"({refit.get('outer')} x {h.get('inner')})" if refit else "best validated epoch")
        return (f"model selection ({sel.get('folds', 1)} validation folds) chose "
                f"{sel.get('chosen')}: {text.split(': ', 1)[1]}; {cut}")
    if method == "milan":
        sel = t.get("selection") or {}
        if sel.get("folds"):
            return (f"validation-selected head: {sel['folds']} validation folds, best at "
                    f"iteration {sel.get('best_iteration')} of the fold-mean curve (stopped at "
                    f"{sel.get('stopped_at')} of {h.get('iterations')}), refit "
                    f"{sel.get('refit_iterations')} on all {sel.get('n_train')} training images")
        if sel:
            refit = f", refit {sel['refit_iterations']}" if "refit_iterations" in sel else ""
            return (f"validation-selected head: best at iteration {sel.get('best_iteration')} "
                    f"(stopped at {sel.get('stopped_at')} of {h.get('iterations')}; "
                    f"{sel.get('n_fit')} fit / {sel.get('n_val')} val){refit}")
        return f"authors: {h.get('iterations')} iterations, last head"
    if method == "itq":
        return f"ITQ {h.get('iterations')} rotation iterations, no labels"
    return None


def records_for_manifest(manifest: Mapping[str, Any], *, device: str | None = None,
                         command: str | None = None) -> list[dict[str, Any]]:
    """The records of one bundle's manifest: one per metric of :data:`METRICS` it holds.

    Derived bundles (``parent`` set, e.g. int8) give none: they trained nothing. ``device``
    replaces a plain ``cpu`` (e.g. "cpu (2 shared cores)"); ``command`` the recorded command.
    """
    if manifest.get("parent"):
        return []
    t = manifest.get("training") or {}
    metrics = t.get("metrics") or {}
    hyper = t.get("hyperparameters") or {}
    frozen = t.get("frozen")
    base = {
        "method": manifest["method"],
        "split": t.get("protocol"),
        "dataset": t.get("dataset"),
        "bits": manifest["bits"],
        "backbone": f"{t.get('backbone')} ({frozen})" if frozen else t.get("backbone"),
        "seed": t.get("seed"),
        "iterations": hyper.get("iterations"),
        "device": device if (device and t.get("device") == "cpu") else t.get("device"),
        "train_seconds": t.get("train_seconds"),
        "encoder_id": str(manifest.get("model_sha256", ""))[:16],
        "recipe": recipe_of(manifest),
        "schedule": schedule_of(manifest),
        "command": command if command is not None else t.get("command", ""),
        "date": t.get("date", ""),
    }
    out = []
    for key, (protocol, name) in METRICS.items():
        if key not in metrics:
            continue
        record = {**base, "protocol": protocol or t.get("protocol"), "metric": name,
                  "value": round(float(metrics[key]), 4)}
        if f"{key}_torch" in metrics:
            record["value_torch"] = round(float(metrics[f"{key}_torch"]), 4)
        if protocol is not None:
            record["milvus_checked"] = bool(metrics.get(f"milvus_agrees_{protocol}", False))
        out.append(record)
    return out


def records_for_bundle(bundle: str | os.PathLike, *, device: str | None = None) -> list[dict[str, Any]]:
    """:func:`records_for_manifest` of the bundle folder's ``manifest.json``."""
    manifest = json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))
    return records_for_manifest(manifest, device=device)


def load_averages(log: str | os.PathLike) -> str | None:
    """The machine's load while a run ran, from the ``uptime`` lines its log starts and ends
    with (``(uptime; rsir train ...; uptime) > LOG``): ``"start 1.8 2.5 2.9, end 3.6 3.0 2.9"``
    (1, 5 and 15 minute load averages); ``None`` when the log has no such line."""
    path = Path(log)
    if not path.is_file():
        return None
    found = [line.split("load average:")[1].replace(",", " ").split()
             for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
             if "load average:" in line]
    if not found:
        return None
    text = "start " + " ".join(found[0])
    return text + (", end " + " ".join(found[-1]) if len(found) > 1 else "")


def append_results(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Merge records into a JSON list file (created when missing); a record with the same
    :data:`IDENTITY` replaces the older one. Returns the whole list as written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # several runs may finish at once (a sweep, two trainings side by side): the merge holds
    # an exclusive lock on a side file, and the new list replaces the old one atomically, so
    # no record is lost and a reader never sees half a file
    with staging.locked(path.with_name(path.name + ".lock")):
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        new_keys = {tuple(r.get(k) for k in IDENTITY) for r in records}
        merged = [r for r in old if tuple(r.get(k) for k in IDENTITY) not in new_keys]
        merged += [dict(r) for r in records]
        staging.replace_text(path, json.dumps(merged, indent=1) + "\n")
    return merged


def markdown_table(records: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table, one row per (method, dataset, split, bits): its metrics side by side."""
    rows: dict[tuple, dict[str, Any]] = {}
    names: list[str] = []
    for r in records:
        key = (r["method"], r["dataset"], r.get("split") or r["protocol"], r["bits"])
        rows.setdefault(key, {"train_seconds": r.get("train_seconds")})[r["metric"]] = r["value"]
        if r["metric"] not in names:
            names.append(r["metric"])
    lines = ["| method | dataset | split | bits | " + " | ".join(names) + " | train time |",
             "|---" * (len(names) + 5) + "|"]
    for (method, ds, split, bits), v in sorted(rows.items(), key=lambda kv: tuple(map(str, kv[0]))):
        cells = " | ".join(f"{v[n]:.4f}" if n in v else "–" for n in names)
        secs = v.get("train_seconds")
        time_cell = f"{secs / 60:.1f} min" if isinstance(secs, (int, float)) else "–"
        lines.append(f"| {method} | {ds} | {split} | {bits} | {cells} | {time_cell} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rsir_train.results BUNDLE... [--json FILE]``: records of bundle folders."""
    p = argparse.ArgumentParser(prog="python -m rsir_train.results", description=__doc__)
    p.add_argument("bundles", nargs="+", help="bundle folders (checkpoint folders are skipped)")
    p.add_argument("--json", help="merge the records into this JSON list (docs/results.json)")
    p.add_argument("--device", default="cpu (2 shared cores)", help="description of a CPU device")
    p.add_argument("--log-dir", help="folder of the runs' logs (<bundle name>.log, each starting "
                   "and ending with `uptime`): the load averages go into the records")
    args = p.parse_args(argv)
    records = []
    for b in args.bundles:
        if str(b).rstrip("/").endswith(".work"):
            continue  # a run's checkpoint folder, not a bundle
        if (Path(b) / "manifest.json").is_file():
            found = records_for_bundle(b, device=args.device)
            if args.log_dir:
                load = load_averages(Path(args.log_dir) / f"{Path(b).name}.log")
                for r in found:
                    r["load_average"] = load
            records += found
        else:
            print(f"skipping {b}: no manifest.json (still training?)", file=sys.stderr)
    if args.json:
        append_results(args.json, records)
    print(markdown_table(records))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
