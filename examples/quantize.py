"""Make an int8 encoder for an edge device from a bundle, and check what it costs.

    python examples/quantize.py my-bundle --calibration /data/nwpu12 --out my-bundle-int8

Static int8 quantization calibrated on real archive images (the bundle's own training split
when the archive is the one it was trained on). The int8 bundle has its own encoder identity:
its codes go into their own collection, never one filled by the fp32 encoder (docs/edge.md).
The same from the shell: `rsir quantize BUNDLE --calibration DIR --out OUT`.
"""

import argparse
import os

import numpy as np

from rsir_sdk import Bundle, Encoder, RsirError
from rsir_train.quantize import QuantizeOptions, quantize_bundle


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundle")
    p.add_argument("--calibration", default=None,
                   help="archive folder (default: the archive the bundle records)")
    p.add_argument("--out", default=None, help="default: BUNDLE-int8")
    p.add_argument("--count", type=int, default=128, help="calibration images")
    args = p.parse_args(argv)
    out = args.out or args.bundle.rstrip("/") + "-int8"
    try:
        calibration = args.calibration or Bundle.load(args.bundle).archive_root
        options = QuantizeOptions(count=args.count, check=64, overwrite=True)
        result = quantize_bundle(args.bundle, calibration, out, options)
        print(f"int8 bundle {out}: bit agreement with fp32 {result.bit_agreement:.2%}")
        # Compare size and codes on a few images the bundle has never calibrated on.
        fp32, int8 = Encoder(args.bundle), Encoder(out)
        images = [os.path.join(calibration, p) for p in Bundle.load(args.bundle).split().query_ids[:16]]
        a, b = fp32.encode(images), int8.encode(images)
        flipped = np.unpackbits(a ^ b).mean()
        print(f"model.onnx {os.path.getsize(fp32.bundle.model_path) / 1e6:.1f} MB -> "
              f"{os.path.getsize(int8.bundle.model_path) / 1e6:.1f} MB; "
              f"{flipped:.2%} of bits differ on {len(images)} query images")
    except RsirError as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
