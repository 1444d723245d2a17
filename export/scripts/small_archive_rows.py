"""Print one small-archive draw's rows of issue 21's table with its checks (docs/results.md).

Why: the table's figures come from three places a draw's runs write (the bundles' manifests,
the linear hash's JSON lines, MiLAN's results), and the checks (AHCL defaults >=
max(``--schedule authors``, linear hash) - 0.005; 64 bits >= 16 bits - 0.005; the same for
MiLAN on the 60/40 split) are easy to misread by hand. Reads what
``export/scripts/small_archive_draw.sh`` writes under ``runs/``::

    python export/scripts/small_archive_rows.py eurosat-60-s1 [--runs runs]

Prints markdown rows; a run not finished yet shows as ``-`` and its checks as ``not run``.
Figures: AHCL through Milvus (``ahcl_map``, the store's ranking) with the tie-aware figure and
the query accuracy; MiLAN mAP@20 leave-one-out through Milvus (``milan_map@20``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

TOLERANCE = 0.005
BITS = (16, 32, 64)


def manifest(runs: Path, name: str, metric: str) -> dict[str, Any] | None:
    """A finished bundle's manifest: ``None`` until its ``--eval`` has added ``metric`` (the
    Milvus figure; the manifest itself is written before it)."""
    path = runs / "bundles" / name / "manifest.json"
    m = json.loads(path.read_text()) if path.is_file() else None
    return m if m and metric in m["training"]["metrics"] else None


def linear(runs: Path, tag: str) -> dict[tuple[str, int], float]:
    """``{(protocol, bits): mAP}`` of the supervised linear hash (the last record of each)."""
    path = runs / f"small_baselines_{tag}.jsonl"
    out: dict[tuple[str, int], float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("method") == "linear":
                out[(rec["protocol"], int(rec["bits"]))] = float(rec["value"])
    return out


def check(ok: bool | None) -> str:
    return "not run" if ok is None else ("**met**" if ok else "**missed**")


def ahcl_rows(runs: Path, tag: str, lin: dict[tuple[str, int], float]) -> list[str]:
    """The AHCL table: defaults, the authors' schedule and the linear hash per length."""
    rows = ["| bits | defaults (tie-aware, accuracy) | `--schedule authors` (tie-aware, accuracy) "
            "| linear hash | check | what the folds chose | time (defaults / authors) |",
            "|---|---|---|---|---|---|---|"]
    got: dict[int, float] = {}
    for bits in BITS:
        sel, auth = (manifest(runs, f"small-{tag}-{k}-{bits}", "ahcl_map")
                     for k in ("sel", "authors"))
        lin_map = lin.get(("80-20", bits))
        cells, ok = [], None
        for m in (sel, auth):
            met = m["training"]["metrics"] if m else {}
            cells.append(f"{met['ahcl_map']:.4f} ({met['ahcl_map_tie_aware']:.4f}, "
                         f"{met['query_accuracy']:.3f})" if m else "-")
        if sel and auth and lin_map is not None:
            best = max(auth["training"]["metrics"]["ahcl_map"], lin_map)
            ok = sel["training"]["metrics"]["ahcl_map"] >= best - TOLERANCE
        if sel:
            got[bits] = sel["training"]["metrics"]["ahcl_map"]
        chose = "-"
        if sel and sel["training"].get("selection"):
            s = sel["training"]["selection"]
            others = [c for c in s["candidates"] if c["name"] != s["chosen"]]
            chose = (f"`{s['chosen']}` (validation {s['val_map']:.4f} against "
                     + ", ".join(f"{c['name']} {c['val_map']:.4f}" for c in others)
                     + f"), refit {s['best_outer']} outer")
        secs = " / ".join(f"{m['training']['train_seconds']:.0f} s" if m else "-"
                          for m in (sel, auth))
        lin_cell = f"{lin_map:.4f}" if lin_map is not None else "-"
        rows.append(f"| {bits} | {cells[0]} | {cells[1]} | {lin_cell} | {check(ok)} | {chose} "
                    f"| {secs} |")
    ok64 = got[64] >= got[16] - TOLERANCE if 16 in got and 64 in got else None
    rows.append(f"\n64 >= 16 - {TOLERANCE}: {check(ok64)}")
    return rows


def milan_rows(runs: Path, tag: str, lin: dict[tuple[str, int], float]) -> list[str]:
    """MiLAN on the 60/40 split: defaults against ``--authors`` and the linear hash."""
    rows = ["| bits | MiLAN defaults (tie-aware) | `--authors` | linear hash | check | chosen "
            "iteration / stopped | time (defaults / authors) |", "|---|---|---|---|---|---|---|"]
    got: dict[int, float] = {}
    for bits in (16, 64):
        runs_ = [manifest(runs, f"small-{tag}-milan6040-{k}-{bits}", "milan_map@20")
                 for k in ("defaults", "authors")]
        mets = [m["training"]["metrics"] if m else None for m in runs_]
        lin_map = lin.get(("60-40", bits))
        ok = None
        if mets[0] and mets[1] and lin_map is not None:
            ok = mets[0]["milan_map@20"] >= max(mets[1]["milan_map@20"], lin_map) - TOLERANCE
        defaults = authors = head = "-"
        if mets[0]:
            got[bits] = mets[0]["milan_map@20"]
            defaults = f"{got[bits]:.4f} ({mets[0]['milan_map@20_tie_aware']:.4f})"
            sel = runs_[0]["training"].get("selection") or {}
            head = f"{sel.get('best_iteration', '?')} / {sel.get('stopped_at', '?')}"
        if mets[1]:
            authors = f"{mets[1]['milan_map@20']:.4f}"
        lin_cell = f"{lin_map:.4f}" if lin_map is not None else "-"
        secs = " / ".join(f"{m['training']['train_seconds']:.0f} s" if m else "-" for m in runs_)
        rows.append(f"| {bits} | {defaults} | {authors} | {lin_cell} | {check(ok)} | {head} "
                    f"| {secs} |")
    ok64 = got[64] >= got[16] - TOLERANCE if 16 in got and 64 in got else None
    rows.append(f"\n64 >= 16 - {TOLERANCE}: {check(ok64)}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("tag", help="the draw, SET-PER_CLASS-sSEED (for example eurosat-60-s1)")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    args = p.parse_args(argv)
    lin = linear(args.runs, args.tag)
    print(f"AHCL, 80/20 split, {args.tag}\n")
    print("\n".join(ahcl_rows(args.runs, args.tag, lin)))
    print(f"\nMiLAN, 60/40 split, {args.tag}\n")
    print("\n".join(milan_rows(args.runs, args.tag, lin)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
