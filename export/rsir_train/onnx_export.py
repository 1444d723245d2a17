"""Export a trained hashing network to ONE ONNX graph: uint8 NHWC RGB images → embedding, codes
(and, when a fitted fine code is given, ``fine_codes``).

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

The fine code (issue 20, :mod:`rsir_train.fine_code`): with ``fine=`` the graph branches after
the backbone's pooling, ``pooled ─► FineCodeHead ─► PackBits(B)`` beside the hash head, so one
forward pass gives both codes. The pooled features are tapped with a hook on the module where
they appear (:func:`pooled_tap`: the input of AHCL's ``hash_layer``, the output of MiLAN's and
ITQ's ``backbone``), so no network class needs to change. The fine code's facts go into the
model's ``metadata_props`` (``rsir.fine_code``, ``rsir.fine_bits``, ``rsir.fine_kind``,
``rsir.fine_output``); :func:`rsir_sdk.bundle_writer.write_bundle` copies them to the manifest.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

import onnx
import torch
from torch import nn

from .features import Normalize
from .fine_code import FineCode, FineCodeHead
from .fine_split import TEST_RATIOS, SplitFineCode, SplitFineCodeHead

OPSET = 17
#: the graph output holding the packed fine codes
FINE_OUTPUT = "fine_codes"


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


def pooled_tap(net: nn.Module) -> tuple[nn.Module, bool]:
    """Where ``net``'s pooled features appear: ``(module, True)`` when they are the module's
    input (AHCL's ``hash_layer``), ``(module, False)`` when its output (the ``backbone`` of
    MiLAN and ITQ, whose ``forward`` is stages + pooling)."""
    if hasattr(net, "hash_layer") and not hasattr(net, "embed_features"):
        layer = net.hash_layer
        assert isinstance(layer, nn.Module)
        return layer, True
    backbone = getattr(net, "backbone", None)
    if isinstance(backbone, nn.Module):
        return backbone, False
    raise ValueError(f"cannot find the pooled features of {type(net).__name__}: it needs a "
                     f"'hash_layer' (fed by the pooled features) or a 'backbone' module")


def _run_tapped(net: nn.Module, x: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """``net(x)`` and the pooled features it computed on the way (one forward pass)."""
    module, as_input = pooled_tap(net)
    seen: list[torch.Tensor] = []
    if as_input:
        handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        out = net(x)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise ValueError(f"the pooled features of {type(net).__name__} were computed "
                         f"{len(seen)} times in one forward pass (expected once)")
    return out, seen[0]


class ImageHashEncoder(nn.Module):
    """uint8 NHWC images → ``(embedding, codes)``, or ``(embedding, codes, fine_codes)`` when a
    fitted :class:`~rsir_train.fine_code.FineCode` is given; the module that is exported."""

    def __init__(self, net: nn.Module, normalize: Normalize, bits: int, threshold: float = 0.0,
                 fine: FineCode | SplitFineCode | None = None):
        super().__init__()
        self.net = net
        self.normalize = normalize
        self.pack = PackBits(bits, threshold)
        #: the split fine code (:mod:`.fine_split`) also reads the uint8 input (its thumbnails)
        self.fine_reads_images = isinstance(fine, SplitFineCode)
        self.fine_head: nn.Module | None = None
        if isinstance(fine, SplitFineCode):
            self.fine_head = SplitFineCodeHead(fine)
        elif fine is not None:
            self.fine_head = FineCodeHead(fine)
        self.fine_pack = PackBits(fine.bits, 0.0) if fine is not None else None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.normalize(images)
        if self.fine_head is None or self.fine_pack is None:
            out = self.net(x)
            u = out[0] if isinstance(out, (tuple, list)) else out
            return u, self.pack(u)
        out, pooled = _run_tapped(self.net, x)
        u = out[0] if isinstance(out, (tuple, list)) else out
        fine_u = (self.fine_head(pooled, images) if self.fine_reads_images
                  else self.fine_head(pooled))
        return u, self.pack(u), self.fine_pack(fine_u)


def pooled_outputs(net: nn.Module, normalize: Normalize, images: Any,
                   batch_size: int = 64) -> Any:
    """The pooled features ``float32 (n, D)`` (numpy) that the exported graph's fine head sees,
    for prepared ``uint8 (n, h, w, 3)`` images: what a fine code is fitted on."""
    import numpy as np

    net, normalize = net.eval().cpu(), normalize.eval().cpu()
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.as_tensor(np.ascontiguousarray(images[start:start + batch_size]))
            parts.append(_run_tapped(net, normalize(batch))[1].float().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def fine_metadata(fine: FineCode | SplitFineCode) -> dict[str, str]:
    """The fine code's facts as ``metadata_props`` entries (the manifest gets the same)."""
    record: dict[str, Any] = {
        "kind": fine.kind, "bits": int(fine.bits), "threshold": 0.0, "bit_order": "big",
        "l2_normalize": bool(fine.l2_normalize), "fitted_on": fine.fitted_on,
        "output": FINE_OUTPUT}
    if isinstance(fine, SplitFineCode):
        record["parts"] = fine.describe()
        if fine.kind in TEST_RATIOS:
            record["test_ratios"] = TEST_RATIOS[fine.kind]
    return {"rsir.fine_code": json.dumps(record), "rsir.fine_bits": str(int(fine.bits)),
            "rsir.fine_kind": fine.kind, "rsir.fine_output": FINE_OUTPUT}


def export_onnx(
    net: nn.Module,
    normalize: Normalize,
    bits: int,
    height: int,
    width: int,
    threshold: float = 0.0,
    doc: str = "",
    fold_pads: bool = True,
    fine: FineCode | SplitFineCode | None = None,
) -> onnx.ModelProto:
    """Export ``net`` (returning ``u`` or ``(u, logits)``) with preprocessing and packing inside.

    ``fine``: a fitted fine code; the graph then has a third output ``fine_codes`` (uint8
    ``(n, fine.bits/8)``, big-endian) from the same pooled features, and its facts in
    ``metadata_props``. ``fold_pads`` (default): fold the zero ``Pad`` nodes into their ``Conv`` for the fixed
    ``height`` x ``width`` input (:func:`rsir_train.graph.fold_static_pads`); ``False`` keeps
    the graph as the exporter wrote it (for comparisons).
    """
    enc = ImageHashEncoder(net, normalize, bits, threshold, fine).eval().cpu()
    names = ["embedding", "codes"] + ([FINE_OUTPUT] if fine is not None else [])
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
            output_names=names,
            dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
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
    for key, value in (fine_metadata(fine) if fine is not None else {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model


def torch_outputs(net: nn.Module, normalize: Normalize, bits: int, images: Any,
                  threshold: float = 0.0, fine: FineCode | SplitFineCode | None = None
                  ) -> tuple[Any, ...]:
    """The exported module's outputs computed in torch (numpy in, numpy out), for comparisons:
    ``(embedding, codes)``, plus ``fine_codes`` when ``fine`` is given."""
    enc = ImageHashEncoder(net, normalize, bits, threshold, fine).eval().cpu()
    with torch.no_grad():
        outs = enc(torch.as_tensor(images))
    return tuple(o.numpy() for o in outs)
