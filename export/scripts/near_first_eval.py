"""The re-measured AHCL/MiLAN rows again with near-duplicates first (issue 20), beside their record.

Why: the default ranking now puts items whose fine code lies within the duplicates radius ahead
of the retrieval ranking (docs/similar.md, "How the store ranks by the fine code", step 3). The
rows of docs/results.json re-measured with the fine ranking (``"ranking": "retrieval distance,
then fine-code distance, then digest (issue 20)"``) were measured before that step; this prints,
for every bundle evaluated again with ``rsir eval <bundle> --data <set> --json > <dir>/<bundle>.json``,
the recorded figure (mAP for the 80/20 protocol, mAP@20 for MiLAN's 60/40) beside the new one
and the difference. Commands (from the repo root)::

    for b in re-ahcl-nwpu12-16 ...; do rsir eval runs/bundles/$b --data ../shared/data/<set> \\
        --json --no-progress > runs/near_eval/$b.json; done
    python export/scripts/near_first_eval.py runs/near_eval [docs/results.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RANKING = "retrieval distance, then fine-code distance, then digest (issue 20)"


def recorded(rows: list[dict[str, Any]], bundle: str) -> tuple[str, float] | None:
    """``(metric, value)`` of the re-measured record written for ``bundle``."""
    for r in rows:
        cmd = r.get("command", "")
        if r.get("ranking") == RANKING and f"runs/bundles/{bundle} " in cmd + " ":
            if r.get("metric") in ("mAP", "mAP@20"):
                return str(r["metric"]), float(r["value"])
    return None


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else "runs/near_eval")
    rows = json.loads(Path(argv[1] if len(argv) > 1 else "docs/results.json").read_text())
    print("| bundle | metric | recorded (fine ranking) | near-duplicates first | difference "
          "| Milvus = numpy |")
    print("|---|---|---|---|---|---|")
    for path in sorted(folder.glob("*.json")):
        got = json.loads(path.read_text())
        rec = recorded(rows, path.stem)
        if rec is None:
            print(f"| {path.stem} | (no record) | | | | |")
            continue
        metric, before = rec
        after = float(got["metrics"][metric])
        print(f"| {path.stem} | {metric} | {before:.4f} | {after:.4f} | {after - before:+.4f} "
              f"| {'yes' if got.get('agree') else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
