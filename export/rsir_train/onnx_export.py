"""Export a trained hashing network to ONE ONNX graph: uint8 NHWC RGB images → embedding, codes.

Both methods export through :func:`export_onnx` (AHCL with threshold 0, MiLAN with 0.5); graph
rewrites that need the bundle's fixed input size live in :mod:`rsir_train.graph`, shared with
quantization.

The graph holds the preprocessing that follows the crop (``/255``, mean/std, NHWC → NCHW) and
the bit packing (big-endian: ``(u > threshold)`` × ``[128, 64, …, 1]`` summed per byte, cast to
uint8), so an edge device only decodes, resizes and crops. Legacy exporter (``dynamo=False``),
opset 17, dynamic batch, no external data.

The bundle fixes the input's height and width, so the TF "same" padding of EfficientNet-Lite
(a ``Pad`` before each strided or odd-kernel ``Conv``, its amounts computed from the shape at run
time) is folded into the convolutions at export (:func:`rsir_train.graph.fold_static_pads`):
onnxruntime then fuses each Conv with its padding, which made the fp32 encoder about 1.5x
faster on one CPU thread (docs/benchmarks.md), with the same outputs.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import onnx
import torch
from torch import nn

from .features import Normalize

OPSET = 17


class PackBits(nn.Module):
    """``(N, K)`` float → ``uint8 (N, K/8)``: bit k set when ``x[:, k] > threshold``, big-endian."""

    def __init__(self, bits: int, threshold: float = 0.0):
        super().__init__()
        if bits % 8:
            raise ValueError(f"bits must be a multiple of 8, got {bits}")
        self.bits = bits
        self.threshold = threshold
        self.register_buffer("weights", torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on = (x > self.threshold).to(torch.float32).reshape(-1, self.bits // 8, 8)
        return (on * self.weights).sum(dim=2).to(torch.uint8)  # type: ignore[operator]


class ImageHashEncoder(nn.Module):
    """uint8 NHWC images → ``(embedding, codes)``; the module that is exported."""

    def __init__(self, net: nn.Module, normalize: Normalize, bits: int, threshold: float = 0.0):
        super().__init__()
        self.net = net
        self.normalize = normalize
        self.pack = PackBits(bits, threshold)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(self.normalize(images))
        u = out[0] if isinstance(out, (tuple, list)) else out
        return u, self.pack(u)


def export_onnx(
    net: nn.Module,
    normalize: Normalize,
    bits: int,
    height: int,
    width: int,
    threshold: float = 0.0,
    doc: str = "",
    fold_pads: bool = True,
) -> onnx.ModelProto:
    """Export ``net`` (returning ``u`` or ``(u, logits)``) with preprocessing and packing inside.

    ``fold_pads`` (default): fold the zero ``Pad`` nodes into their ``Conv`` for the fixed
    ``height`` x ``width`` input (:func:`rsir_train.graph.fold_static_pads`); ``False`` keeps
    the graph as the exporter wrote it (for comparisons).
    """
    enc = ImageHashEncoder(net, normalize, bits, threshold).eval().cpu()
    dummy = torch.zeros(2, height, width, 3, dtype=torch.uint8)
    buf = io.BytesIO()
    # the legacy exporter warns about constant folding and its own deprecation on every call, and
    # the tracer about "same" padding computed from the input shape (the bundle fixes that
    # shape); none changes the graph, and parity is checked by the tests
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            enc,
            (dummy,),
            buf,  # type: ignore[arg-type]
            input_names=["images"],
            output_names=["embedding", "codes"],
            dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}, "codes": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    model = onnx.load_model_from_string(buf.getvalue())
    if fold_pads:
        from .graph import fold_static_pads

        fold_static_pads(model, "images", height, width)
    if doc:
        model.doc_string = doc
    onnx.checker.check_model(model)
    return model


def torch_outputs(net: nn.Module, normalize: Normalize, bits: int, images: Any,
                  threshold: float = 0.0) -> tuple[Any, Any]:
    """The exported module's outputs computed in torch (numpy in, numpy out), for comparisons."""
    enc = ImageHashEncoder(net, normalize, bits, threshold).eval().cpu()
    with torch.no_grad():
        u, codes = enc(torch.as_tensor(images))
    return u.numpy(), codes.numpy()
