"""The AHCL/MiLAN rows of docs/results.json before and after the fine ranking (issue 20).

Why: issue 20 changed how ties of the retrieval distance are ranked (by the fine code, then the
digest, where the digest alone ranked them), and every AHCL and MiLAN row was re-measured with
it. This prints the markdown table of docs/results.md "Re-measured with the fine ranking": the
11-30 figure and its tie-aware value beside the re-measured one and its tie-aware value on the
same model (the expectation over every order of tied codes, what digest order gives on
average), so the last column is the ranking's effect alone. A second table does the same for
the Backbones rows (Lite0 / Lite1 / Lite2 at the 600-step schedule of their time), matched by
their recipe tag in the command.

    python export/scripts/remeasure_table.py [docs/results.json]
"""

from __future__ import annotations

import json
import sys
from typing import Any

RANKING = "retrieval distance, then fine-code distance, then digest (issue 20)"
METRICS = ("mAP@20", "mAP@20 tie-aware", "mAP", "mAP tie-aware", "mAP (at training, ties by id)")
OTHER_RECIPES = ("lite1", "lite2", "600steps")


def key(r: dict[str, Any]) -> tuple:
    split = "60-40" if "60-40" in r.get("command", "") else "80-20"
    return (r["method"], r["dataset"], split, r["bits"])


def figures(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, float]]:
    out: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r["method"] in ("ahcl", "milan") and r.get("metric") in METRICS and not any(
                x in r.get("command", "") for x in OTHER_RECIPES):
            out.setdefault(key(r), {})[r["metric"]] = r["value"]
    return out


def recipe_of(r: dict[str, Any]) -> str | None:
    """The Backbones recipe a row belongs to (``lite1``, ``lite2``, ``600steps``), or None."""
    command = r.get("command", "")
    for tag in ("lite1", "lite2"):
        if tag in command:
            return tag
    return "600steps" if "600steps" in command else None


def backbone_table(rows: list[dict[str, Any]]) -> None:
    """The Backbones rows (``rsir eval`` figures) before and after the fine ranking."""
    found: dict[tuple[str, bool], dict[str, float]] = {}
    for r in rows:
        tag = recipe_of(r)
        if tag and r["method"] == "ahcl" and r.get("metric") in ("mAP", "mAP tie-aware"):
            found.setdefault((tag, r.get("ranking") == RANKING), {})[r["metric"]] = r["value"]
    print("\n| recipe | before (digest ties) | before tie-aware | now (fine ranking, Milvus) | "
          "now tie-aware (same model) | now − before | ranking alone |")
    print("|---|---|---|---|---|---|---|")
    for tag in ("600steps", "lite1", "lite2"):
        a, b = found.get((tag, False)), found.get((tag, True))
        if not a or not b:
            continue
        print(f"| {tag} | {a['mAP']:.4f} | {a['mAP tie-aware']:.4f} | {b['mAP']:.4f} | "
              f"{b['mAP tie-aware']:.4f} | {b['mAP'] - a['mAP']:+.4f} | "
              f"{b['mAP'] - b['mAP tie-aware']:+.4f} |")


def main(argv: list[str]) -> int:
    rows = json.load(open(argv[0] if argv else "docs/results.json"))
    old = figures([r for r in rows if r.get("ranking") is None])  # before any fine ranking
    new = figures([r for r in rows if r.get("ranking") == RANKING])
    print("| method | dataset | split | bits | metric | 11-30 (digest ties) | 11-30 tie-aware | "
          "now (fine ranking, Milvus) | now tie-aware (same model) | now − 11-30 | ranking alone |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in sorted(set(old) & set(new)):
        a, b = old[k], new[k]
        m = "mAP@20" if "mAP@20" in b else "mAP"
        then = a[m] if m in a else a["mAP (at training, ties by id)"]
        now, now_tie = b[m], b[m + " tie-aware"]
        print(f"| {' | '.join(str(x) for x in k[:4])} | {m} | {then:.4f} | "
              f"{a[m + ' tie-aware']:.4f} | {now:.4f} | {now_tie:.4f} | {now - then:+.4f} | "
              f"{now - now_tie:+.4f} |")
    backbone_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
