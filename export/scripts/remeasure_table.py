"""The AHCL/MiLAN rows of docs/results.json before and after the fine ranking (issue 20).

Why: issue 20 changed how ties of the retrieval distance are ranked (by the fine code, then the
digest, where the digest alone ranked them), and every AHCL and MiLAN row was re-measured with
it. This prints the markdown table of docs/results.md "Re-measured with the fine ranking": the
11-30 figure and its tie-aware value beside the re-measured one and its tie-aware value on the
same model (the expectation over every order of tied codes, what digest order gives on
average), so the last column is the ranking's effect alone.

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


def main(argv: list[str]) -> int:
    rows = json.load(open(argv[0] if argv else "docs/results.json"))
    old = figures([r for r in rows if r.get("ranking") != RANKING])
    new = figures([r for r in rows if r.get("ranking") == RANKING])
    print("| method | dataset | split | bits | metric | 11-30 (digest ties) | 11-30 tie-aware | "
          "now (fine ranking, Milvus) | now tie-aware (same model) | now − 11-30 | ranking alone |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in sorted(set(old) & set(new)):
        a, b = old[k], new[k]
        m = "mAP@20" if "mAP@20" in b else "mAP"
        then = a.get(m, a.get("mAP (at training, ties by id)"))
        now, now_tie = b[m], b[m + " tie-aware"]
        print(f"| {' | '.join(str(x) for x in k[:4])} | {m} | {then:.4f} | "
              f"{a[m + ' tie-aware']:.4f} | {now:.4f} | {now_tie:.4f} | {now - then:+.4f} | "
              f"{now - now_tie:+.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
