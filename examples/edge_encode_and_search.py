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
    p.add_argument("--bundle", default="quickstart-out/bundle", help="the (int8 or fp32) bundle")
    p.add_argument("--uri", default="quickstart-out/rsir.db")
    p.add_argument("--collection", default="eurosat_quickstart")
    p.add_argument("-k", type=int, default=5)
    args = p.parse_args(argv)
    try:
        # --- on the device: image -> packed code (bits/8 bytes) ---
        encoder = Encoder(args.bundle, threads=1)
        code = encoder.encode([args.image])[0].tobytes()
        print(f"device: {encoder.bits}-bit code = {len(code)} bytes: {code.hex()}")

        # --- at the index: the bytes are all it needs ---
        with Retriever(args.bundle, uri=args.uri, collection=args.collection) as r:
            hits = r.search_codes(code, k=args.k)[0]
    except RsirError as exc:
        print(f"error: {exc}")
        return 1
    for h in hits:
        print(f"distance {h.distance:3d}  {h.label:22s}  {h.id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
