"""Images/s of the ONNX encoder on onnxruntime (fp32, int8) vs the same network in torch eager.

Why: edge devices run the exported graph with onnxruntime alone; this says what that costs and
gains against running the training framework itself, on the same images, the same machine, the
same thread counts. Timed: the network on already decoded and cropped ``uint8`` images
(decoding is timed apart, as ``Encoder.encode`` end to end from JPEG files).

    python benchmarks/encode.py --bundle runs/nwpu12-64 --data /work/shared/data/nwpu12
    python benchmarks/encode.py --backbone efficientnet_lite0 --bits 64 --data DIR   # no trained bundle
    python benchmarks/encode.py --bundle runs/nwpu12-64-lite1 --data DIR --section encode-lite1

With ``--bundle`` the torch network is rebuilt from the manifest (backbone, bits, classes) and its
weights loaded from ``<bundle>.work/checkpoint.pt`` when present (then its codes are checked
against the ONNX model's); the int8 bundle is ``--int8`` or made with ``rsir_train.quantize``.
Needs the training package (``pip install -e ./export``: torch). CPU only unless onnxruntime has a GPU provider.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _common import load_average, machine, section, table, timeit, versions, write_section

from rsir_sdk import Bundle, Encoder
from rsir_sdk.images import load_image
from rsir_sdk.preprocess import prepare
from rsir_train.graph import fold_static_pads
from rsir_train.quantize import QuantizeOptions, calibration_set, quantize_bundle


def torch_encoder(bundle: Bundle, checkpoint: Path | None):
    """The bundle's network as a torch module (uint8 NHWC in → (u, codes)), and a weights note."""
    import torch

    from rsir_train.ahcl.model import AHCLNet
    from rsir_train.backbones import build_backbone
    from rsir_train.features import Normalize
    from rsir_train.onnx_export import ImageHashEncoder

    if bundle.method != "ahcl":
        raise SystemExit(f"torch side rebuilds AHCL networks only, not {bundle.method!r}")
    training = bundle.manifest.get("training", {})
    backbone = training.get("backbone", "efficientnet_lite0")
    net = AHCLNet(build_backbone(backbone, pretrained=False), bundle.bits, len(bundle.classes))
    note = "random weights (timing only: speed does not depend on weight values)"
    if checkpoint and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        net.load_state_dict(state["net"])
        note = f"weights from {checkpoint}"
    pre = bundle.preprocess
    enc = ImageHashEncoder(net, Normalize(pre["mean"], pre["std"]), bundle.bits,
                           bundle.code_threshold).eval()
    return enc, backbone, note


def fresh_bundle(backbone: str, bits: int, classes: int, out: Path) -> Bundle:
    """An AHCL-shaped bundle with an ImageNet backbone and a random hash head (no training)."""
    import torch

    from rsir_sdk.bundle_writer import write_bundle
    from rsir_train.ahcl.model import AHCLNet
    from rsir_train.backbones import build_backbone
    from rsir_train.features import Normalize
    from rsir_train.onnx_export import export_onnx

    torch.manual_seed(0)
    bb = build_backbone(backbone, pretrained=backbone.startswith("efficientnet_lite"))
    net = AHCLNet(bb, bits, classes).eval()
    pre = dict(bb.preprocess, scale=1 / 255.0)
    h, w = pre["crop"]
    model = export_onnx(net, Normalize(pre["mean"], pre["std"]), bits, h, w)
    write_bundle(out, model, {"method": "ahcl", "bits": bits, "preprocess": pre,
                              "classes": [f"c{i}" for i in range(classes)],
                              "training": {"backbone": backbone, "note": "untrained hash head"}},
                 None)
    torch.save({"net": net.state_dict()}, out.parent / (out.name + ".work.pt"))
    return Bundle.load(out)


def ort_session(model: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])


def rate_ort(session, images: np.ndarray, batch: int, repeat: int) -> float:
    name = session.get_inputs()[0].name

    def run():
        for s in range(0, len(images), batch):
            session.run(["codes"], {name: images[s : s + batch]})

    t, _ = timeit(run, repeat=repeat)
    return len(images) / t


def rate_torch(module, images: np.ndarray, batch: int, threads: int, repeat: int) -> float:
    import torch

    torch.set_num_threads(threads)
    tensors = [torch.from_numpy(images[s : s + batch]) for s in range(0, len(images), batch)]

    def run():
        with torch.inference_mode():
            for t in tensors:
                module(t)

    t, _ = timeit(run, repeat=repeat)
    return len(images) / t


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: a trained bundle or a backbone, real images, pass sizes, the section."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="trained fp32 bundle")
    src.add_argument("--backbone", choices=["efficientnet_lite0", "efficientnet_lite1",
                                            "efficientnet_lite2", "small_cnn"],
                     help="no bundle: ImageNet backbone + random hash head")
    p.add_argument("--bits", type=int, default=64, help="with --backbone")
    p.add_argument("--int8", help="int8 bundle of --bundle (default: quantize it here)")
    p.add_argument("--checkpoint", help="torch weights (default <bundle>.work/checkpoint.pt)")
    p.add_argument("--data", default=os.environ.get("RSIR_DATA"),
                   help="folder of real images (timing and int8 calibration); default $RSIR_DATA")
    p.add_argument("--images", type=int, default=64, help="images per timed pass (batch 32)")
    p.add_argument("--single", type=int, default=16, help="images per timed pass (batch 1)")
    p.add_argument("--repeat", type=int, default=3, help="best of this many passes")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--section", default="encode",
                   help="the docs/benchmarks.md section written (default encode; e.g. encode-lite1 "
                        "for a second backbone, so the Lite0 section is kept)")
    args = p.parse_args(argv)
    if not args.data:
        p.error("--data (or RSIR_DATA) is required: real images to encode")
    return args


def load_bundles(args: argparse.Namespace, data: Path, tmp: Path) -> tuple[Bundle, Bundle, Path]:
    """The fp32 bundle (``--bundle`` or built fresh), its int8 twin (given or quantized here), torch weights."""
    if args.bundle:
        fp32 = Bundle.load(args.bundle)
        ckpt = Path(args.checkpoint) if args.checkpoint else Path(str(fp32.path) + ".work") / "checkpoint.pt"
    else:
        fp32 = fresh_bundle(args.backbone, args.bits, 12, tmp / "fp32")
        ckpt = tmp / "fp32.work.pt"
    if args.int8:
        int8 = Bundle.load(args.int8)
        if (int8.manifest.get("parent") or {}).get("model_sha256") != fp32.model_sha256:
            raise SystemExit(f"{args.int8} is not derived from {fp32.path}")
    else:
        print("quantizing ...", file=sys.stderr, flush=True)
        quantize_bundle(fp32, data, tmp / "int8", QuantizeOptions(min_agreement=0.0))
        int8 = Bundle.load(tmp / "int8")
    return fp32, int8, ckpt


@dataclass
class Graphs:
    """The two fp32 ONNX graphs timed: the bundle's (Pads folded) and the same module unfolded."""

    fp32_path: Path  # the bundle's model.onnx, or a folded copy of it when it predates the fold
    unfolded_path: Path  # the torch module exported with its Pad nodes kept
    n_pads: int  # Pad nodes in the bundle's own model.onnx (0: exported folded)
    n_unfolded: int  # Pad nodes in the unfolded export


def fp32_graphs(module, fp32: Bundle, tmp: Path) -> Graphs:
    """The bundle's graph (folded here if exported before the fold) and the unfolded export, saved in ``tmp``."""
    import onnx

    n_pads = sum(n.op_type == "Pad" for n in onnx.load(str(fp32.model_path)).graph.node)
    # the graph as exported before Pads were folded at export (Pad nodes kept), from the same
    # torch module: separates that graph fix from the rest
    from rsir_train.onnx_export import export_onnx

    h, w = fp32.input_height, fp32.input_width
    unfolded_model = export_onnx(module.net, module.normalize, fp32.bits, h, w,
                                 fp32.code_threshold, fold_pads=False)
    n_unfolded = sum(n.op_type == "Pad" for n in unfolded_model.graph.node)
    if n_pads:  # a bundle exported before the fold: fold it here, as export now does
        folded_model = onnx.load(str(fp32.model_path))
        fold_static_pads(folded_model, fp32.input_name, h, w)
        fp32_path = tmp / "fp32-folded.onnx"
        onnx.save_model(folded_model, str(fp32_path))
    else:
        fp32_path = fp32.model_path
    unfolded_path = tmp / "fp32-unfolded.onnx"
    onnx.save_model(unfolded_model, str(unfolded_path))
    return Graphs(fp32_path, unfolded_path, n_pads, n_unfolded)


def load_images(data: Path, count: int, fp32: Bundle) -> tuple[list[Path], np.ndarray, float]:
    """``count`` real images of ``data`` decoded and cropped; the files, the array and images/s of that."""
    # the same stratified draw (seed 0) as rsir quantize's folder reader, through rsir_sdk.archive
    chosen = calibration_set(data, reader="folder", count=count, check=0, seed=0)
    files = [chosen.root / f for f in chosen.paths]
    if len(files) < count:
        raise SystemExit(f"{data} holds {len(files)} images; --images {count} needs more")
    t0 = time.perf_counter()
    images = np.stack([prepare(load_image(f), fp32.preprocess) for f in files])
    return files, images, len(files) / (time.perf_counter() - t0)


def compare_codes(module, images: np.ndarray, graphs: Graphs) -> tuple[float, bool]:
    """Share of bits torch and the bundle's graph agree on; whether folded and unfolded codes match."""
    import torch

    # the torch module, the bundle's graph and the unfolded graph are the same network: same
    # codes on real images
    with torch.inference_mode():
        _, tcodes = module(torch.from_numpy(images))
    ocodes = ort_session(graphs.fp32_path, os.cpu_count()).run(["codes"], {"images": images})[0]
    ucodes = ort_session(graphs.unfolded_path, os.cpu_count()).run(["codes"], {"images": images})[0]
    same_torch = float((np.unpackbits(tcodes.numpy()) == np.unpackbits(ocodes)).mean())
    return same_torch, bool(np.array_equal(ocodes, ucodes))


def network_rows(module, images: np.ndarray, graphs: Graphs, int8: Bundle,
                 args: argparse.Namespace) -> list[list]:
    """The HEAD table: images/s of torch and the three ONNX graphs, per thread count and batch."""
    import torch

    all_threads = os.cpu_count() or 1
    rows = []
    for threads in sorted({1, all_threads}):
        for batch in (1, 32):
            imgs = images[: args.single] if batch == 1 else images
            print(f"threads={threads} batch={batch} ...", file=sys.stderr, flush=True)
            r_t = rate_torch(module, imgs, batch, threads, args.repeat)
            r_f = rate_ort(ort_session(graphs.fp32_path, threads), imgs, batch, args.repeat)
            r_u = rate_ort(ort_session(graphs.unfolded_path, threads), imgs, batch, args.repeat)
            r_8 = rate_ort(ort_session(int8.model_path, threads), imgs, batch, args.repeat)
            rows.append([threads, batch, r_t, r_f, r_u, r_8, f"{r_f / r_t:.2f}x",
                         f"{r_u / r_t:.2f}x", f"{r_8 / r_t:.2f}x", f"{r_8 / r_f:.2f}x"])
    torch.set_num_threads(all_threads)
    return rows


def end_to_end_rates(bundles: dict[str, Bundle], paths: list[Path], repeat: int) -> dict[str, float]:
    """Images/s of ``Encoder.encode`` from JPEG files (decode + resize + crop + network), batch 32."""
    rates = {}
    for label, b in bundles.items():
        enc = Encoder(b, providers=["CPUExecutionProvider"], threads=os.cpu_count() or 1, batch_size=32)
        t, _ = timeit(lambda: enc.encode(paths), repeat=repeat)
        rates[label] = len(paths) / t
    return rates


def model_sizes(module, fp32: Bundle, int8: Bundle) -> list[list]:
    """MB of the torch state_dict and of both bundles' model.onnx."""
    import torch

    buf = io.BytesIO()
    torch.save(module.net.state_dict(), buf)
    return [["torch state_dict (fp32)", buf.tell() / 1e6],
            ["model.onnx fp32", fp32.model_path.stat().st_size / 1e6],
            ["model.onnx int8 (QDQ)", int8.model_path.stat().st_size / 1e6]]


@dataclass
class EncodeFigures:
    """Everything the report states: the network, the code checks and the timings."""

    backbone: str
    weights_note: str
    graphs: Graphs
    n_images: int
    prep_rate: float  # decode + resize + crop, images/s on one thread
    same_torch: float  # share of bits torch and the bundle's graph agree on
    same_unfolded: bool
    rows: list[list]
    e2e: dict[str, float]
    sizes: list[list]


def measure(args: argparse.Namespace, data: Path, fp32: Bundle, int8: Bundle, ckpt: Path,
            tmp: Path) -> EncodeFigures:
    """Rebuild the torch network, export the unfolded graph, check codes, then time everything."""
    module, backbone, weights_note = torch_encoder(fp32, ckpt)
    if "random weights" in weights_note:
        raise SystemExit(f"no torch weights for {fp32.path} ({ckpt} is missing): pass --checkpoint")
    graphs = fp32_graphs(module, fp32, tmp)
    files, images, prep_rate = load_images(data, args.images, fp32)
    same_torch, same_unfolded = compare_codes(module, images, graphs)
    rows = network_rows(module, images, graphs, int8, args)
    # end to end from JPEG files (decode + resize + crop + network), batch 32, all threads
    e2e = end_to_end_rates({"fp32": fp32, "int8": int8}, files, args.repeat)
    return EncodeFigures(backbone, weights_note, graphs, len(files), prep_rate, same_torch,
                         same_unfolded, rows, e2e, model_sizes(module, fp32, int8))


def report(f: EncodeFigures, fp32: Bundle, args: argparse.Namespace, data: Path) -> str:
    """The speed table, the paragraphs on network, codes and end-to-end speed, the size table."""
    h, w = fp32.input_height, fp32.input_width
    g = f.graphs
    body = table(HEAD, f.rows)
    body += (f"\n\nNetwork: AHCL {fp32.bits}-bit, backbone {f.backbone}, input {h}x{w} (uint8 NHWC, "
             f"normalisation and bit packing inside the graph); torch side: the same module in "
             f"eager mode under `torch.inference_mode()`, {f.weights_note}. "
             f"Images/s on {f.n_images} real images of `{data.name}` already decoded and cropped "
             f"(batch 1: {args.single} images), best of {args.repeat} passes. ")
    body += (f"Codes on all {f.n_images} images: the bundle's graph and torch agree on "
             f"{f.same_torch:.2%} of bits; the bundle's graph and the unfolded graph give "
             f"{'identical' if f.same_unfolded else 'DIFFERENT'} codes. "
             f"\"fp32 bundle\": the bundle's `model.onnx` as `rsir train` exports it now, the "
             f"{g.n_unfolded} zero Pad nodes of the \"same\" padding folded into their Convs at "
             f"export (`rsir_train.graph.fold_static_pads`)"
             + (f" (this bundle predates that and was folded here: {g.n_pads} Pads)" if g.n_pads else "")
             + "; \"Pads kept\": the same torch module exported without that step, as bundles "
             "were before. ")
    body += (f"\n\nEnd to end (`Encoder.encode` on JPEG files: decode + resize + crop + network, "
             f"batch 32, {os.cpu_count() or 1} threads): fp32 {f.e2e['fp32']:.1f} images/s, int8 "
             f"{f.e2e['int8']:.1f} images/s; decode + resize + crop alone: {f.prep_rate:.0f} images/s "
             f"on one thread.\n\n" + table(["file", "MB"], f.sizes) + "\n")
    return body


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch  # noqa: F401 (loaded before onnxruntime quantizes: the import order is unchanged)

    load0 = load_average()
    tmp = tempfile.TemporaryDirectory(prefix="rsir-encode-")
    data = Path(args.data)
    fp32, int8, ckpt = load_bundles(args, data, Path(tmp.name))
    figures = measure(args, data, fp32, int8, ckpt, Path(tmp.name))
    body = report(figures, fp32, args, data)
    print(body)
    meta = machine({"versions": versions("onnxruntime", "torch", "numpy"),
                    "bundle": str(args.bundle or f"fresh {args.backbone} (ImageNet weights, random hash head)"),
                    "int8 bundle": str(args.int8 or "quantized by this run (rsir_train.quantize defaults)")})
    if not args.no_write:
        title = "Encoding speed: onnxruntime vs torch eager (`benchmarks/encode.py`)"
        if args.section != "encode":
            title += f", {figures.backbone} {fp32.bits} bits"
        write_section(args.section, section(args.section, title, body, meta,
                                            (load0, load_average())))
    tmp.cleanup()
    return 0

HEAD = ["threads", "batch", "torch eager fp32 img/s", "ORT fp32 bundle img/s",
        "ORT fp32, Pads kept img/s", "ORT int8 img/s", "fp32 bundle / torch",
        "Pads kept / torch", "int8 / torch", "int8 / fp32 bundle"]

if __name__ == "__main__":
    sys.exit(main())
