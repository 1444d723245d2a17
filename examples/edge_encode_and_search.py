"""The edge flow in one process: encode on the device, send only the code bytes, search with them.

    python examples/edge_encode_and_search.py IMAGE --bundle quickstart-out/bundle \
        --uri quickstart-out/rsir.db --collection eurosat_quickstart

An edge box needs only onnxruntime, numpy and Pillow for the first half (see docs/edge.md);
the second half runs where the index lives (in a real deployment behind `rsir serve`, with
rsir_sdk.serve.client.RemoteRetriever sending the codes: see examples/edge_client.py).
"""

import argparse

from rsir_sdk import Encoder, Retriever, RsirError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("image")
    p.add_argument("--bundle", default="quickstart-out/bundle",
                   help="the bundle that filled --collection (an int8 bundle needs a collection "
                        "of its own: its codes differ from the fp32 parent's)")
    p.add_argument("--uri", default="quickstart-out/rsir.db")
    p.add_argument("--collection", default="eurosat_quickstart",
                   help="filled by --bundle (default: the quickstart's, fp32)")
    p.add_argument("-k", type=int, default=5)
    args = p.parse_args(argv)
    try:
        # --- on the device: image -> packed code (bits/8 bytes) and, when the bundle has one,
        # its fine code (fine_bits/8 bytes) from the same forward pass (docs/edge.md) ---
        encoder = Encoder(args.bundle, threads=1)
        fine = None
        if encoder.fine_bits is not None:
            both = encoder.encode_both([args.image])
            code, fine = both.codes[0].tobytes(), both.fine[0].tobytes()
        else:
            code = encoder.encode([args.image])[0].tobytes()
        sent = len(code) + (len(fine) if fine else 0)
        print(f"device: {encoder.bits}-bit code = {len(code)} bytes: {code.hex()}"
              + (f" + {encoder.fine_bits}-bit fine code = {sent} bytes in all" if fine else ""))

        # --- at the index: the bytes are all it needs (the fine code orders each tie group) ---
        with Retriever(args.bundle, uri=args.uri, collection=args.collection) as r:
            hits = r.search_codes(code, k=args.k, fine=fine)[0]
    except RsirError as exc:
        print(f"error: {exc}")
        return 1
    for h in hits:
        fine_d = "" if h.fine_distance is None else f"  fine {h.fine_distance:3d}"
        print(f"distance {h.distance:3d}{fine_d}  {h.label:22s}  {h.id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
