"""Search an indexed archive by image: the developer's one call.

    python examples/search_by_image.py QUERY.jpg --bundle quickstart-out/bundle \
        --uri quickstart-out/rsir.db --collection eurosat_quickstart -k 5

Run `rsir quickstart` first (or index your own archive, see populate_milvus.py).
"""

import argparse

from rsir_sdk import Retriever, RsirError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("query", help="image file or http(s) URL")
    p.add_argument("--bundle", default="quickstart-out/bundle", help="the model bundle")
    p.add_argument("--uri", default="quickstart-out/rsir.db", help="Milvus Lite file or server URL")
    p.add_argument("--collection", default="eurosat_quickstart")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--label", default=None, help="only hits with this label")
    args = p.parse_args(argv)

    try:
        # The Retriever pairs the bundle's encoder with the collection; the collection
        # remembers which encoder (and raster rule) filled it and refuses any other.
        with Retriever(args.bundle, uri=args.uri, collection=args.collection) as r:
            # A dict filter is escaped for you; a list value means "any of".
            filt = {"label": args.label} if args.label else None
            hits = r.search(args.query, k=args.k, filter=filt)
    except RsirError as exc:  # every SDK error is one readable line
        print(f"error: {exc}")
        return 1
    # Hits are sorted by Hamming distance; ties by the digest of the id (the primary key).
    for rank, h in enumerate(hits, 1):
        print(f"{rank:2d}  distance {h.distance:3d}  {h.label:22s}  {h.id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
