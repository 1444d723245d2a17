"""Turn trained bundles into result rows (docs/results.json) and a markdown table.

``python -m export.report runs/bundles/ahcl-* --json docs/results.json`` reads each bundle's
manifest (metrics, train time, the exact command) and writes one row per bundle and metric.
Torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: manifest metric -> results.json metric name
METRICS = {"map_query_vs_learned_db": "map", "map_query_vs_encoded_db": "map_encoded_db"}


def rows_for_bundle(bundle: str | Path, device: str = "cpu") -> list[dict[str, Any]]:
    """Result rows of one bundle: the AHCL-protocol mAP and the encoded-database reference.

    Derived bundles (``parent`` set, e.g. int8) give no rows: they did not train anything.
    """
    m = json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))
    if m.get("parent"):
        return []  # a derived bundle (e.g. int8): its training block is its parent's
    t = m["training"]
    base = {
        "method": m["method"], "protocol": t["protocol"], "dataset": t["dataset"],
        "bits": m["bits"], "backbone": f"{t['backbone']} ({t.get('frozen', '')})",
        "device": device if t.get("device") == "cpu" else t.get("device", device),
        "train_seconds": t["train_seconds"], "command": t.get("command", ""),
        "date": t.get("date", ""),
    }
    return [{**base, "metric": name, "value": round(float(t["metrics"][key]), 4)}
            for key, name in METRICS.items() if key in t["metrics"]]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table: dataset, bits, mAP (learned V), mAP (encoded db), train time."""
    by_key: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        by_key.setdefault((r["dataset"], r["bits"]), {"train_seconds": r["train_seconds"]})[r["metric"]] = r["value"]
    lines = ["| dataset | bits | mAP (learned V database) | mAP (database encoded by the network) | train time |",
             "|---|---|---|---|---|"]
    for (ds, bits), v in sorted(by_key.items()):
        lines.append(f"| {ds} | {bits} | {v.get('map', float('nan')):.4f} | "
                     f"{v.get('map_encoded_db', float('nan')):.4f} | {v['train_seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Collect rows from bundle folders; write JSON (``--json``) and print a markdown table."""
    p = argparse.ArgumentParser(prog="python -m export.report", description=__doc__)
    p.add_argument("bundles", nargs="+")
    p.add_argument("--json", help="write the rows to this file")
    p.add_argument("--device", default="cpu (2 shared cores)", help="device description for CPU runs")
    args = p.parse_args(argv)
    rows = []
    for b in args.bundles:
        if str(b).rstrip("/").endswith(".work"):
            continue  # a run's checkpoint folder, not a bundle
        if (Path(b) / "manifest.json").is_file():
            rows += rows_for_bundle(b, args.device)
        else:
            print(f"skipping {b}: no manifest.json (still training?)", file=sys.stderr)
    order = {"map": 0, "map_encoded_db": 1}
    rows.sort(key=lambda r: (r["dataset"], -r["bits"], order.get(r["metric"], 9)))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
