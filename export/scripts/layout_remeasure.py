"""The AHCL/MiLAN rows of docs/results.json again with the layout fine code (issue 20).

Why: ``--fine-code layout`` (docs/similar.md, "The layout fine code and the same-scene test")
changes how ties of the retrieval distance are ranked (by a 320-bit code whose first 64 bits are
the pooled features, where the split code gave them 64 of 256) and adds two same-scene tests.
Issue 20 asks every AHCL and MiLAN row re-measured through Milvus with the default ranking: no
row lower than today's by more than 0.002. This prints, for every record the
layout trainings wrote (``rsir train ... --fine-code layout --eval --results FILE``), the 11-30
figure (digest ties), the figure recorded with the fine ranking (split or PCA code), the layout
figure and its tie-aware value on the same model, and the differences. ``--write`` also adds
the layout records to docs/results.json, tagged with :data:`LAYOUT_RANKING` (replacing earlier
layout records of the same row). Commands (from the repo root)::

    bash export/scripts/layout_remeasure.sh eurosat   # and nwpu12 (docs/results.md)
    python export/scripts/layout_remeasure.py runs/layout_results_*.json [--write]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from remeasure_table import RANKING, figures, key

LAYOUT_RANKING = ("layout fine code: same-scene tests first, then retrieval distance, fine-code "
                  "distance, digest (issue 20)")


def layout_figures(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, float]]:
    """The layout records' figures by (method, dataset, split, bits)."""
    return figures([r for r in rows if "--fine-code layout" in r.get("command", "")])


def table(docs: list[dict[str, Any]], layout: dict[tuple, dict[str, float]]) -> list[str]:
    """The markdown rows: one per re-measured (method, dataset, split, bits)."""
    old = figures([r for r in docs if r.get("ranking") is None])
    fine = figures([r for r in docs if r.get("ranking") == RANKING])
    out = ["| method | dataset | split | bits | metric | 11-30 (digest ties) | fine ranking "
           "(recorded) | layout (Milvus) | layout tie-aware | layout − 11-30 | layout − fine |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(layout):
        now = layout[k]
        m = "mAP@20" if "mAP@20" in now else "mAP"
        a, b = old.get(k, {}), fine.get(k, {})
        then = a.get(m, a.get("mAP (at training, ties by id)"))
        rec = b.get(m)
        cells = [f"{then:.4f}" if then is not None else "–",
                 f"{rec:.4f}" if rec is not None else "–", f"{now[m]:.4f}",
                 f"{now.get(m + ' tie-aware', float('nan')):.4f}",
                 f"{now[m] - then:+.4f}" if then is not None else "–",
                 f"{now[m] - rec:+.4f}" if rec is not None else "–"]
        out.append(f"| {' | '.join(str(x) for x in k)} | {m} | {' | '.join(cells)} |")
    return out


def write(docs_path: Path, docs: list[dict[str, Any]], new: list[dict[str, Any]]) -> int:
    """Add ``new`` (tagged) to docs/results.json, replacing layout records of the same rows."""
    tagged = [dict(r, ranking=LAYOUT_RANKING) for r in new
              if "--fine-code layout" in r.get("command", "")]
    same = {(key(r), r.get("metric"), r.get("protocol")) for r in tagged}
    kept = [r for r in docs if not (r.get("ranking") == LAYOUT_RANKING
                                    and (key(r), r.get("metric"), r.get("protocol")) in same)]
    docs_path.write_text(json.dumps(kept + tagged, indent=1) + "\n")
    return len(tagged)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="--results files of the trainings")
    ap.add_argument("--docs", type=Path, default=Path("docs/results.json"))
    ap.add_argument("--write", action="store_true", help="add the records to --docs")
    args = ap.parse_args(argv)
    docs = json.loads(args.docs.read_text())
    new = [r for p in args.results for r in json.loads(p.read_text())]
    print("\n".join(table(docs, layout_figures(new))))
    if args.write:
        print(f"\n{write(args.docs, docs, new)} records added to {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
