"""Populate Milvus from an existing archive folder (or CSV manifest): resumable, with a report.

    python examples/populate_milvus.py /data/scenes --bundle my-bundle --uri ./scenes.db
    python examples/populate_milvus.py /data/scenes --bundle my-bundle --uri http://milvus:19530

Interrupt it at any time (Ctrl-C, kill -9) and run it again: images already in the collection
are skipped. Images that cannot be read are listed in the report file, not silently dropped.
"""

import argparse
import sys

from rsir_sdk import Retriever, RsirError
from rsir_sdk.options import IngestOptions


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("archive", help="a folder of images (walked recursively) or a .csv manifest")
    p.add_argument("--bundle", required=True)
    p.add_argument("--uri", default="./rsir.db", help="Milvus Lite file or server URL")
    p.add_argument("--collection", default=None, help="default: <method>_<bits>_<encoder id>")
    p.add_argument("--report", default="failed.csv")
    args = p.parse_args(argv)

    tty = sys.stdout.isatty()
    shown = [0]  # images done at the last line printed (a log gets one each 1,000 and the end)

    def progress(state):  # called as work advances; the library itself never prints
        line = (f"{state.done}/{state.total} handled, {state.indexed} indexed, "
                f"{state.skipped} already there, {state.failed} failed")
        if tty:  # one line, redrawn
            print("\r" + line, end="", flush=True)
        elif state.done >= shown[0] + 1000 or state.done == state.total:
            shown[0] = state.done
            print(line, flush=True)

    try:
        with Retriever(args.bundle, uri=args.uri, collection=args.collection) as r:
            # label_from="parent": the folder holding each image is its label (the same as
            # r.index(args.archive, label_from="parent", ...): keywords are the fields)
            options = IngestOptions(label_from="parent")
            summary = r.index(args.archive, options, report=args.report, progress=progress)
            total = r.count()
    except RsirError as exc:
        print(f"\nerror: {exc}")
        return 1
    print(f"\nindexed {summary.indexed}, skipped {summary.skipped}, failed {len(summary.failed)}; "
          f"the collection holds {total} items")
    top = summary.reasons()
    for reason, n in top:
        print(f"  {n} x {reason}")
    rest = len(summary.failed) - sum(n for _, n in top)
    if rest:
        print(f"  {rest} for other reasons (all in {args.report})")
    return 3 if summary.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
