"""The edge flow, device side: encode images here, send only their packed codes to `rsir serve`.

On the server (once; see docs/serve.md for the whole flow):

    rsir quantize quickstart-out/bundle --calibration export/rsir_train/sample/eurosat --out quickstart-out/bundle-int8
    rsir index quickstart-out/bundle-int8 --learned --uri ./rsir.db --collection scenes_int8
    # (an AHCL bundle's learned database codes V, as docs/edge.md decides; a MiLAN or ITQ
    #  bundle has none: rsir index BUNDLE ARCHIVE ... --label-from parent encodes the archive)
    export RSIR_READ_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(24))")
    rsir serve quickstart-out/bundle-int8 --uri ./rsir.db --collection scenes_int8 \
        --archive-root export/rsir_train/sample/eurosat

On the device (it needs onnxruntime, numpy, Pillow, httpx and the same bundle folder):

    python examples/edge_client.py quickstart-out/bundle-int8 \
        export/rsir_train/sample/eurosat/Forest/Forest_1001.jpg --token "$RSIR_READ_TOKEN"
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rsir_sdk.errors import RsirError
from rsir_sdk.serve.client import RemoteRetriever


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundle", help="the bundle the service runs (e.g. its int8 one)")
    p.add_argument("images", nargs="+", help="images to search with")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the service")
    p.add_argument("--token", default=os.environ.get("RSIR_READ_TOKEN"), help="its bearer token")
    p.add_argument("-k", type=int, default=5)
    args = p.parse_args()

    try:
        # With a bundle, RemoteRetriever encodes on this device. It first asks the service which
        # encoder filled its collection and refuses to go on if it is not this bundle's
        # (CollectionMismatchError): codes of two encoders are not comparable.
        with RemoteRetriever(args.url, token=args.token, bundle=args.bundle, retries=3) as r:
            for image in args.images:
                hits = r.search(image, k=args.k)       # encode here, send bits/8 (+ fine_bits/8) bytes
                size = Path(image).stat().st_size
                print(f"{image}: sent {r.last_request_bytes} bytes of code "
                      f"(the file is {size} bytes)")
                for h in hits:
                    print(f"  {h.distance:3d}  {h.label:<22} {h.id}")
    except RsirError as exc:                          # the same exception classes as in-process
        print(f"error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:                         # Ctrl-C while waiting for the service
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
