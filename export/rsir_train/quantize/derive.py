"""Derive a smaller, faster encoder bundle from an fp32 one: static int8 (QDQ) or fp16.

Why: edge devices run the encoder on a CPU with onnxruntime alone; an int8 graph is about 4x
smaller and several times faster there. A derived bundle is a *new encoder*: its ``model.onnx``
has its own sha256 and so its own ``encoder_id``, and a Milvus collection filled by the parent
refuses its codes (quantization flips a fraction of a percent of the bits). Its manifest's
``parent`` records where it came from, how it was calibrated and how often its bits agree
with the parent's on held-out images.

What is quantized (int8): onnxruntime static quantization, QDQ format, of every Conv, MatMul
and Gemm of the network (and the Adds between them), weights int8 per output channel
(symmetric), activations uint8 per tensor (U8S8, onnxruntime's fast CPU path), calibrated on
real images of the archive read through the bundle's own preprocessing. Zero ``Pad`` nodes
("same" padding) are first folded into their Convs, which the input size fixed by the bundle
allows. Three parts stay in float32 on purpose: the preprocessing at the input (uint8 →
normalised float), the hash layer (the last weighted op before ``embedding``: it decides every
bit's sign, and is a tiny part of the compute), and the bit packing after ``embedding`` (its
``x * [128..1]`` sums must stay exact). When the int8 bits agree with the parent's on less
than ``target_agreement`` (99%) of held-out bits, it quantizes again keeping the first 3, 6,
12, 24 weighted layers in float too (the most sensitive to per-tensor activation ranges).

AHCL bundles ship their learned database codes V: the derived bundle ships the *same* V, so that
``Retriever(int8_bundle).add_learned_codes()`` fills a collection of the int8 identity (see
``docs/edge.md`` for why).

This module imports ``onnx`` and ``onnxruntime.quantization`` only inside functions, so
``import rsir_sdk`` stays torch- and onnx-free. Command line::

    rsir quantize BUNDLE --calibration DIR --out BUNDLE_INT8 [--method minmax] [--reader auto]

>>> from rsir_sdk.quantize import quantize_bundle                                 # doctest: +SKIP
>>> res = quantize_bundle("runs/bundles/ahcl-nwpu12-64", "data/nwpu12",
...                       "runs/bundles/ahcl-nwpu12-64-int8")                    # doctest: +SKIP
>>> res.bit_agreement, res.encoder_id                                             # doctest: +SKIP
(0.994629, 'fcdf053a7725fcc7')
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .bundle import MANIFEST_FILE, Bundle, file_sha256
from .errors import ImageLoadError, RsirError
from .images import load_image
from .preprocess import prepare

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp16")
#: calibration methods of onnxruntime.quantization.CalibrationMethod, by our option name
CALIBRATION_METHODS = {
    "minmax": "MinMax",
    "percentile": "Percentile",
    "entropy": "Entropy",
    "distribution": "Distribution",
}
READERS = ("auto", "folder", "csv", "split")
#: activation types: uint8 (U8S8, onnxruntime's fast path on x86-64 and fine on ARM) or int8
ACTIVATION_TYPES = ("uint8", "int8")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
#: how many leading weighted layers to keep in float on successive tries (see target_agreement)
LEADING_SCHEDULE = (3, 6, 12, 24)
SPLIT_FILE = "split.json"
#: bundle files copied to the derived bundle as they are (besides the database)
COPIED_FILES = (SPLIT_FILE,)

Progress = Callable[[dict[str, Any]], None]


class QuantizeError(RsirError, RuntimeError):
    """A bundle cannot be quantized (no calibration images, onnx missing, codes disagree)."""


@dataclass(frozen=True)
class CalibrationSet:
    """Images chosen to calibrate a quantized encoder, and disjoint ones to check it.

    ``paths`` and ``check_paths`` are relative to ``root`` (POSIX separators).
    """

    root: Path
    reader: str
    paths: list[str]
    check_paths: list[str]
    seed: int
    note: str = ""

    def fingerprint(self) -> str:
        """sha256 over the calibration file list: says which images calibrated the model."""
        h = hashlib.sha256()
        for p in self.paths:
            h.update(p.encode("utf-8") + b"\n")
        return h.hexdigest()


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_bundle` wrote and measured."""

    path: Path
    precision: str
    encoder_id: str
    parent_encoder_id: str
    bit_agreement: float  # fraction of bits equal to the parent's on the check images
    codes_identical: float  # fraction of check images whose whole code equals the parent's
    check_images: int
    check_set: str  # "held-out" (disjoint from calibration) or "calibration"
    calibration_images: int
    method: str
    model_bytes: int
    parent_model_bytes: int
    seconds: float
    float_layers: list[str] = field(default_factory=list)  # weighted layers kept in float32
    attempts: list[dict[str, Any]] = field(default_factory=list)
    excluded_nodes: list[str] = field(default_factory=list, repr=False)


# --------------------------------------------------------------------------- calibration images


def _stratified(paths: list[str], seed: int) -> list[str]:
    """Shuffle per top-level folder (class) and interleave, so any prefix covers every class."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for p in sorted(paths):
        groups.setdefault(p.split("/")[0] if "/" in p else "", []).append(p)
    shuffled = [[g[i] for i in rng.permutation(len(g))] for _, g in sorted(groups.items())]
    out = []
    for i in range(max((len(g) for g in shuffled), default=0)):
        out += [g[i] for g in shuffled if i < len(g)]
    return out


def _folder_images(root: Path) -> list[str]:
    return sorted(
        f.relative_to(root).as_posix()
        for f in root.rglob("*")
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
    )


def _csv_images(csv_path: Path) -> list[str]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "path" not in rows[0]:
        raise QuantizeError(
            f"calibration CSV {csv_path} needs a header with a 'path' column (paths relative to "
            f"the CSV's folder)"
        )
    return [r["path"].replace("\\", "/") for r in rows if r.get("path")]


def _split_ids(bundle: Bundle) -> tuple[list[str], list[str]] | None:
    path = bundle.path / SPLIT_FILE
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        return [str(x) for x in obj["train"]], [str(x) for x in obj["query"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise QuantizeError(f"cannot read {path}: {exc}") from None


def calibration_set(
    source: str | os.PathLike,
    bundle: Bundle | None = None,
    *,
    reader: str = "auto",
    count: int = 256,
    check: int = 256,
    seed: int = 0,
) -> CalibrationSet:
    """Choose ``count`` calibration images and up to ``check`` disjoint ones to measure agreement.

    Readers:

    - ``folder``: every image under the folder ``source`` (recursively), drawn stratified by
      top-level sub-folder (class) with ``seed``;
    - ``csv``: the ``path`` column of the CSV file ``source`` (paths relative to its folder);
    - ``split``: the bundle's ``split.json`` with ``source`` as the archive root: calibration
      images from its *train* part (the retrieval database), check images from its *query*
      part, so the images used to evaluate retrieval never calibrate the model;
    - ``auto``: ``split`` when the bundle has a split file whose images are under ``source``,
      ``csv`` for a ``.csv`` file, else ``folder``.
    """
    src = Path(source)
    if reader not in READERS:
        raise QuantizeError(f"unknown calibration reader {reader!r}; choose one of {READERS}")
    if not src.exists():
        raise QuantizeError(f"calibration source {src} does not exist")
    if count < 1:
        raise QuantizeError(f"calibration count must be >= 1, got {count}")
    ids = _split_ids(bundle) if bundle is not None else None
    if reader == "auto":
        if src.is_file() and src.suffix.lower() == ".csv":
            reader = "csv"
        elif ids is not None and src.is_dir() and ids[0] and (src / ids[0][0]).is_file():
            reader = "split"
        else:
            reader = "folder"
    note = ""
    if reader == "split":
        if ids is None:
            raise QuantizeError(
                f"reader 'split' needs the bundle's {SPLIT_FILE}, which "
                f"{bundle.path if bundle else 'the bundle'} does not have: use --reader folder"
            )
        if not src.is_dir():
            raise QuantizeError(f"reader 'split' needs the archive folder, got {src}")
        missing = [p for p in ids[0][:20] + ids[1][:20] if not (src / p).is_file()]
        if missing:
            raise QuantizeError(
                f"the bundle's split names images that are not under {src} (e.g. {missing[0]}): "
                f"give the archive folder the bundle was trained on"
            )
        paths = _stratified(ids[0], seed)[:count]
        check_paths = _stratified(ids[1], seed)[:check]
        note = "calibration from the split's train part, check images from its query part"
        root = src
    else:
        if reader == "csv":
            if not src.is_file():
                raise QuantizeError(f"reader 'csv' needs a CSV file, got {src}")
            root, listed = src.parent, _csv_images(src)
        else:
            if not src.is_dir():
                raise QuantizeError(f"reader 'folder' needs a folder of images, got {src}")
            root, listed = src, _folder_images(src)
        order = _stratified(listed, seed)
        paths, check_paths = order[:count], order[count : count + check]
    if not paths:
        raise QuantizeError(f"no calibration images found in {src} (reader {reader})")
    return CalibrationSet(root, reader, paths, check_paths, seed, note)


def _prepared_batches(
    root: Path, paths: Sequence[str], preprocess: dict[str, Any], batch_size: int
) -> Iterator[np.ndarray]:
    for start in range(0, len(paths), batch_size):
        batch = []
        for p in paths[start : start + batch_size]:
            try:
                batch.append(prepare(load_image(root / p), preprocess))
            except ImageLoadError as exc:
                raise QuantizeError(f"calibration image {p} cannot be read: {exc.reason}") from None
        yield np.stack(batch)


class _Reader:
    """onnxruntime CalibrationDataReader over prepared uint8 batches (supports strided ranges)."""

    def __init__(self, root: Path, paths: Sequence[str], bundle: Bundle, batch_size: int,
                 progress: Progress | None):
        self.root, self.paths, self.bundle = root, list(paths), bundle
        self.batch_size = batch_size
        self.n_batches = -(-len(self.paths) // batch_size)
        self.progress = progress
        self.set_range(0, self.n_batches)

    def __len__(self) -> int:
        return self.n_batches

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, self.n_batches)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while (item := self.get_next()) is not None:
            yield item

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        i = self._next
        self._next += 1
        sub = self.paths[i * self.batch_size : (i + 1) * self.batch_size]
        batch = next(_prepared_batches(self.root, sub, self.bundle.preprocess, len(sub)))
        if self.progress:
            self.progress({"event": "calibrate", "batch": i + 1, "batches": self.n_batches})
        return {self.bundle.input_name: batch}


# --------------------------------------------------------------------------- graph analysis


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise QuantizeError(
            f"quantization needs the onnx package (and onnxruntime): pip install onnx ({exc})"
        ) from None
    return onnx


def _name_nodes(model) -> None:
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"rsir_{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def float_region(model, embedding: str) -> tuple[list[str], list[str], str | None]:
    """Split the graph: ``(preprocessing nodes, packing nodes, hash layer node name)``.

    Preprocessing = nodes with no Conv/MatMul/Gemm among themselves and their ancestors (the
    uint8 → normalised float part). Packing = every node downstream of ``embedding``. The hash
    layer = the last Conv/MatMul/Gemm upstream of ``embedding``.
    """
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    weighted_upstream: dict[str, bool] = {}

    def upstream(node) -> bool:
        if node.name in weighted_upstream:
            return weighted_upstream[node.name]
        weighted_upstream[node.name] = False  # guards against cycles (none in a valid graph)
        res = node.op_type in WEIGHTED_OPS or any(
            upstream(producer[i]) for i in node.input if i in producer
        )
        weighted_upstream[node.name] = res
        return res

    pre = [n.name for n in nodes if not upstream(n)]
    # packing: breadth-first from the embedding tensor
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    pack, frontier, seen = [], [embedding], set()
    while frontier:
        t = frontier.pop()
        for n in consumers.get(t, []):
            if n.name not in seen:
                seen.add(n.name)
                pack.append(n.name)
                frontier += list(n.output)
    # hash layer: walk up from the embedding's producer to the first weighted op
    head, stack, visited = None, [embedding], set()
    while stack and head is None:
        t = stack.pop(0)
        n = producer.get(t)
        if n is None or n.name in visited:
            continue
        visited.add(n.name)
        if n.op_type in WEIGHTED_OPS:
            head = n.name
        else:
            stack += [i for i in n.input if i in producer]
    return pre, pack, head


def fold_static_pads(model, input_name: str, height: int, width: int) -> int:
    """Fold zero ``Pad`` nodes into the ``Conv`` they feed; returns how many were folded.

    Why: "same" padding (TF-style, as EfficientNet-Lite's) exports as a Pad whose amounts are
    computed from the input shape at run time. onnxruntime then neither fuses it into the Conv
    nor, in int8, quantizes across it: the Pads and the layout reorders around them took about
    45% of the fp32 encoder's time and 25% of the int8 one's. The bundle fixes the input's
    height and width, so the amounts are constants: they are computed once here (onnxruntime,
    on a dummy batch, checked equal for two batch sizes) and written into the Conv's ``pads``.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    nodes = list(model.graph.node)
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    inits = {i.name: i for i in model.graph.initializer}
    candidates = []
    for n in nodes:
        if n.op_type != "Pad":
            continue
        mode = next((a.s.decode() for a in n.attribute if a.name == "mode"), "constant")
        users = consumers.get(n.output[0], [])
        if (mode != "constant" or len(users) != 1 or users[0].op_type != "Conv"
                or n.output[0] in graph_outputs or (len(n.input) > 3 and n.input[3])):
            continue
        conv = users[0]
        if conv.input[0] != n.output[0]:
            continue
        auto_pad = next((a.s.decode() for a in conv.attribute if a.name == "auto_pad"), "NOTSET")
        if auto_pad != "NOTSET":
            continue
        if len(n.input) > 2 and n.input[2]:
            value = inits.get(n.input[2])
            if value is None or np.any(numpy_helper.to_array(value) != 0):
                continue
        candidates.append((n, conv))
    if not candidates:
        return 0
    # the pad amounts: read initializers, compute the rest with onnxruntime
    wanted = [p.input[1] for p, _ in candidates if p.input[1] not in inits]
    values = {p.input[1]: numpy_helper.to_array(inits[p.input[1]])
              for p, _ in candidates if p.input[1] in inits}
    if wanted:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        for name in wanted:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
            probe.graph.output[-1].type.tensor_type.elem_type = onnx.TensorProto.INT64
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        runs = [sess.run(wanted, {input_name: np.zeros((b, height, width, 3), np.uint8)})
                for b in (1, 2)]
        for name, a, b in zip(wanted, *runs):
            if not np.array_equal(a, b):
                continue  # depends on the batch size: leave this Pad alone
            values[name] = a
    folded = 0
    for pad, conv in candidates:
        amounts = values.get(pad.input[1])
        if amounts is None or amounts.shape != (8,):
            continue
        amounts = [int(x) for x in amounts]
        if amounts[0] or amounts[1] or amounts[4] or amounts[5] or min(amounts) < 0:
            continue  # only spatial, non-negative padding of an NCHW tensor
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        new = [old[0] + amounts[2], old[1] + amounts[3], old[2] + amounts[6], old[3] + amounts[7]]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(kept + [helper.make_attribute("pads", new)])
        conv.input[0] = pad.input[0]
        model.graph.node.remove(pad)
        folded += 1
    _remove_dead_nodes(model)
    onnx.checker.check_model(model)
    return folded


def _remove_dead_nodes(model) -> None:
    """Drop nodes whose outputs nothing uses (the shape arithmetic left by folded Pads)."""
    while True:
        used = {o.name for o in model.graph.output}
        for n in model.graph.node:
            used.update(n.input)
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


# --------------------------------------------------------------------------- quantizers


def _quantize_int8(
    src_model_path: Path, dst: Path, reader: _Reader, *, method: str, per_channel: bool,
    exclude: list[str], activations: str, reduce_range: bool, cache: Path | None = None,
) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    # onnxruntime's calibrators print progress to stdout: library code must not print
    with contextlib.redirect_stdout(io.StringIO()) as chatter, _quiet_root_logger():
        quantize_static(
            str(src_model_path),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=None,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
            extra_options={
                # one batch per collection step: memory stays at one batch's activations
                "CalibStridedMinMax": 1,
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
            },
            # ranges are collected once and reused when a retry keeps more layers in float
            calibration_cache_path=str(cache) if cache else None,
        )
    if chatter.getvalue().strip():
        log.debug("onnxruntime calibration: %s", chatter.getvalue().strip())
    return {
        "format": "QDQ",
        "weights": "int8, symmetric, " + ("per output channel" if per_channel else "per tensor")
        + (", 7-bit range" if reduce_range else ""),
        "activations": f"{activations}, asymmetric, per tensor",
        "calibration_method": CALIBRATION_METHODS[method],
    }


def _pre_process(src: Path, dst: Path) -> bool:
    """onnxruntime's recommended pre-processing (shape inference, graph optimisation); False if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            with contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic)
            return True
        except Exception as exc:  # shape inference fails on some graphs; quantize without it
            log.info("quantization pre-processing failed (symbolic=%s): %s", not skip_symbolic, exc)
    return False


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization warns through the root logger; keep that out of users' logs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _convert_fp16(model, exclude: list[str]):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(
        model, keep_io_types=True, node_block_list=exclude, disable_shape_infer=False
    )


# --------------------------------------------------------------------------- agreement


def _agreement(
    parent: Bundle, child_model: Path, root: Path, paths: Sequence[str], batch_size: int,
    providers: Sequence[str] | None, threads: int | None,
) -> tuple[float, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    provs = list(providers) if providers else ["CPUExecutionProvider"]
    sessions = [
        ort.InferenceSession(str(p), sess_options=opts, providers=provs)
        for p in (parent.model_path, child_model)
    ]
    agree = total = same = n = 0
    for batch in _prepared_batches(root, paths, parent.preprocess, batch_size):
        a, b = (s.run([parent.codes_output], {parent.input_name: batch})[0] for s in sessions)
        a_bits = np.unpackbits(a, axis=1)
        b_bits = np.unpackbits(b, axis=1)
        agree += int((a_bits == b_bits).sum())
        total += a_bits.size
        same += int((a == b).all(axis=1).sum())
        n += len(batch)
    return agree / max(total, 1), same / max(n, 1)


# --------------------------------------------------------------------------- the job


def quantize_bundle(
    bundle: Bundle | str | os.PathLike,
    calibration: str | os.PathLike,
    out: str | os.PathLike,
    *,
    precision: str = "int8",
    method: str = "minmax",
    reader: str = "auto",
    count: int = 256,
    check: int = 256,
    seed: int = 0,
    per_channel: bool = True,
    quantize_hash_layer: bool = False,
    fold_pads: bool = True,
    keep_float: Sequence[str] = (),
    target_agreement: float = 0.99,
    activations: str = "uint8",
    reduce_range: bool = False,
    batch_size: int = 16,
    min_agreement: float = 0.95,
    overwrite: bool = False,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> QuantizeResult:
    """Write a derived bundle at ``out`` with an int8 (or fp16) encoder; return what it measured.

    ``calibration``: an archive folder, an image folder or a CSV file (see
    :func:`calibration_set` for ``reader``, ``count``, ``check`` and ``seed``). ``method``: the
    calibration method (``minmax``, ``percentile``, ``entropy``, ``distribution``).
    ``min_agreement``: refuse (raise :class:`QuantizeError`, write nothing) when fewer bits than
    this agree with the parent's on the check images. ``target_agreement``: when the int8
    model's bits agree less than this, quantize again keeping the first 3, 6, 12, 24 weighted
    layers in float (the ranges are calibrated once), stopping at the first that reaches it
    and otherwise keeping the best; 0 disables the retries. ``keep_float``: name fragments of
    nodes to keep in float in any case. ``fold_pads``: fold zero Pads into
    their Convs first (see :func:`fold_static_pads`). ``activations``: ``uint8`` (default,
    U8S8) or ``int8`` (S8S8: on x86-64 onnxruntime 1.32 leaves the convs next to residual
    Adds unfused, and the model is no faster than fp32). ``reduce_range``: 7-bit weights, for
    x86-64 CPUs without VNNI where U8S8 products can saturate. ``providers`` run the agreement check
    (fp16 needs a GPU provider to run fast; the CPU provider runs it too).
    The bundle is assembled in a temporary folder and moved to ``out`` only when complete.
    """
    onnx = _require_onnx()
    t0 = time.perf_counter()
    parent = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    if precision not in PRECISIONS:
        raise QuantizeError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if method not in CALIBRATION_METHODS:
        raise QuantizeError(
            f"unknown calibration method {method!r}; choose one of {sorted(CALIBRATION_METHODS)}"
        )
    if activations not in ACTIVATION_TYPES:
        raise QuantizeError(f"activations must be one of {ACTIVATION_TYPES}, got {activations!r}")
    if parent.manifest.get("parent"):
        raise QuantizeError(
            f"bundle {parent.path} is itself derived (from encoder "
            f"{parent.manifest['parent'].get('encoder_id')}); quantize the fp32 parent instead"
        )
    out = Path(out)
    if out.resolve() == parent.path.resolve():
        raise QuantizeError("--out must be a new folder, not the parent bundle itself")
    if out.exists() and not out.is_dir():
        raise QuantizeError(f"--out {out} is a file; give a folder for the new bundle")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise QuantizeError(f"{out} exists and is not empty: choose another --out or overwrite")

    calib = None
    if precision == "int8":
        calib = calibration_set(calibration, parent, reader=reader, count=count, check=check,
                                seed=seed)
        check_root, check_paths = calib.root, calib.check_paths or calib.paths
        check_set = "held-out" if calib.check_paths else "calibration"
    else:
        # fp16 needs no calibration: the images only measure agreement
        calib = calibration_set(calibration, parent, reader=reader, count=check, check=0,
                                seed=seed)
        check_root, check_paths, check_set = calib.root, calib.paths, "held-out"

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".rsir-quantize-", dir=out.parent) as tmp:
        work = Path(tmp)
        stage = work / "bundle"
        stage.mkdir()
        model = onnx.load(str(parent.model_path))
        _name_nodes(model)
        folded = 0
        if fold_pads:
            folded = fold_static_pads(model, parent.input_name, parent.input_height,
                                      parent.input_width)
        named = work / "named.onnx"
        onnx.save_model(model, str(named))
        pre_processed = False
        if precision == "int8":
            pre_processed = _pre_process(named, work / "pre.onnx")
            if pre_processed:
                named = work / "pre.onnx"
                model = onnx.load(str(named))
        pre, pack, head = float_region(model, parent.embedding_output)
        keep_head = precision == "int8" and not quantize_hash_layer and head is not None
        exclude = pre + pack + ([head] if keep_head else [])
        kept_by_user = [n.name for n in model.graph.node
                        if any(pat in n.name for pat in keep_float) and n.name not in exclude]
        if keep_float and not kept_by_user:
            raise QuantizeError(f"--keep-float {list(keep_float)} matches no node of the model")
        exclude += kept_by_user
        weighted_names = {n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS}
        child_path = stage / parent.manifest["model_file"]
        if progress:
            progress({"event": "check", "images": len(check_paths)})

        def check(path: Path) -> tuple[float, float]:
            try:
                return _agreement(parent, path, check_root, check_paths, batch_size, providers,
                                  threads)
            except Exception as exc:  # onnxruntime raises plain Exceptions of many kinds
                raise QuantizeError(
                    f"the {precision} model does not run on {providers or 'CPU'}: {exc}"
                ) from exc

        attempts: list[dict[str, Any]] = []
        leading_kept: list[str] = []
        if precision == "int8":
            # weighted layers in graph order, the candidates to keep in float when the
            # agreement misses its target: the first, highest-resolution layers are the most
            # sensitive (per-tensor activation ranges, see docs/edge.md)
            leading = [n.name for n in model.graph.node
                       if n.op_type in WEIGHTED_OPS and n.name not in exclude]
            schedule = [0] + ([k for k in LEADING_SCHEDULE if k < len(leading)]
                              if target_agreement else [])
            best = None
            for k in schedule:
                rd = _Reader(calib.root, calib.paths, parent, batch_size, progress)
                attempt_path = work / f"q{k}.onnx"
                try:
                    qinfo = _quantize_int8(named, attempt_path, rd, method=method,
                                           per_channel=per_channel, exclude=exclude + leading[:k],
                                           activations=activations, reduce_range=reduce_range,
                                           cache=work / "calibration.json")
                except Exception as exc:  # onnxruntime raises plain Exceptions of many kinds
                    raise QuantizeError(
                        f"onnxruntime could not quantize {parent.model_path}: {exc}"
                    ) from exc
                child = onnx.load(str(attempt_path))
                _copy_metadata(model, child, parent, precision)
                onnx.save_model(child, str(attempt_path))
                agreement, identical = check(attempt_path)
                attempts.append({"leading_float": k, "bit_agreement": round(agreement, 6)})
                if progress:
                    progress({"event": "attempt", **attempts[-1]})
                if best is None or agreement > best[1]:
                    best = (k, agreement, identical, qinfo)
                if agreement >= target_agreement:
                    break
            k, agreement, identical, qinfo = best
            leading_kept = leading[:k]
            shutil.copyfile(work / f"q{k}.onnx", child_path)
        else:
            try:
                child = _convert_fp16(model, pre + pack)
            except Exception as exc:
                raise QuantizeError(f"fp16 conversion of {parent.model_path} failed: {exc}") from exc
            qinfo = {"format": "float16 weights and activations (uint8 input and float32 "
                               "embedding kept)"}
            _copy_metadata(model, child, parent, precision)
            onnx.save_model(child, str(child_path))
            agreement, identical = check(child_path)
        if agreement < min_agreement:
            raise QuantizeError(
                f"the {precision} encoder agrees with its parent on only {agreement:.4f} of the "
                f"bits (< {min_agreement}); nothing written. Keep sensitive layers in float "
                f"(--keep-float NAME; the first layers usually are), use more calibration "
                f"images (--count) or another --method"
            )

        manifest = json.loads(json.dumps(parent.manifest))
        manifest["model_sha256"] = file_sha256(child_path)
        manifest["precision"] = precision
        calibration_record = {
            "source": str(Path(calibration)),
            "reader": calib.reader,
            "count": len(calib.paths) if precision == "int8" else 0,
            "seed": seed,
            "fingerprint": calib.fingerprint() if precision == "int8" else None,
            "paths": calib.paths if precision == "int8" else [],
            "note": calib.note if precision == "int8" else
            "fp16 needs no calibration: these images only measured agreement",
        }
        manifest["parent"] = {
            "model_sha256": parent.model_sha256,
            "encoder_id": parent.encoder_id,
            "bundle": str(parent.path),
            "method": f"onnxruntime static {precision}" if precision == "int8" else "fp16 cast",
            "quantization": {
                **qinfo,
                "kept_float32": {"preprocessing": len(pre), "packing": len(pack),
                                 "hash_layer": head if keep_head else None,
                                 "by_request": kept_by_user,
                                 "leading_layers": leading_kept},
                "target_agreement": target_agreement if precision == "int8" else None,
                "attempts": attempts,
                "pads_folded_into_conv": folded,
                "pre_processed": pre_processed,
                "onnxruntime": _ort_version(),
            },
            "calibration": calibration_record,
            "bit_agreement": round(agreement, 6),
            "agreement": {"images": len(check_paths), "set": check_set,
                          "codes_identical": round(identical, 6)},
            "note": "training.metrics are the parent's fp32 figures",
        }
        if parent.has_database:
            spec = parent.manifest["database"]
            shutil.copyfile(parent.path / spec["file"], stage / spec["file"])
            manifest["database"] = dict(spec, source=f"parent {parent.encoder_id}")
        for name in COPIED_FILES:
            if (parent.path / name).is_file():
                shutil.copyfile(parent.path / name, stage / name)
        (stage / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        Bundle.load(stage)  # the reader must accept what we wrote
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(stage), str(out))

    written = Bundle.load(out)
    return QuantizeResult(
        path=out,
        precision=precision,
        encoder_id=written.encoder_id,
        parent_encoder_id=parent.encoder_id,
        bit_agreement=agreement,
        codes_identical=identical,
        check_images=len(check_paths),
        check_set=check_set,
        calibration_images=len(calib.paths) if precision == "int8" else 0,
        method=CALIBRATION_METHODS[method] if precision == "int8" else "none",
        model_bytes=written.model_path.stat().st_size,
        parent_model_bytes=parent.model_path.stat().st_size,
        seconds=time.perf_counter() - t0,
        float_layers=([head] if keep_head else []) + leading_kept
        + [n for n in kept_by_user if n in weighted_names],
        attempts=attempts,
        excluded_nodes=exclude + leading_kept,
    )


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _copy_metadata(src, dst, parent: Bundle, precision: str) -> None:
    props = {p.key: p.value for p in src.metadata_props}
    props["rsir.precision"] = precision
    props["rsir.parent_sha256"] = parent.model_sha256
    del dst.metadata_props[:]
    for k, v in props.items():
        e = dst.metadata_props.add()
        e.key, e.value = k, v
    dst.doc_string = (src.doc_string + f" [{precision} derived from {parent.encoder_id}]").strip()


# --------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``rsir quantize`` arguments to ``p`` (the CLI owner wires the sub-command)."""
    p.add_argument("bundle", help="the fp32 bundle to derive from")
    p.add_argument("--calibration", required=True,
                   help="archive folder (with the bundle's split.json: train part calibrates, "
                        "query part checks), an image folder, or a CSV with a 'path' column")
    p.add_argument("--out", required=True, help="folder of the new bundle")
    p.add_argument("--precision", choices=PRECISIONS, default="int8")
    p.add_argument("--method", choices=sorted(CALIBRATION_METHODS), default="minmax",
                   help="calibration method (default minmax)")
    p.add_argument("--reader", choices=READERS, default="auto",
                   help="how calibration images are chosen (default auto)")
    p.add_argument("--count", type=int, default=256, help="calibration images (default 256)")
    p.add_argument("--check", type=int, default=256,
                   help="held-out images to measure bit agreement (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weights")
    p.add_argument("--quantize-hash-layer", action="store_true",
                   help="quantize the hash layer too (default: it stays float32)")
    p.add_argument("--activations", choices=ACTIVATION_TYPES, default="uint8",
                   help="activation type (default uint8: U8S8, onnxruntime's fast CPU path)")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights: for x86-64 CPUs without VNNI (avoids U8S8 saturation)")
    p.add_argument("--target-agreement", type=float, default=0.99,
                   help="below this bit agreement, retry keeping the first 3/6/12/24 layers in "
                        "float (default 0.99; 0 = never)")
    p.add_argument("--keep-float", action="append", metavar="NAME",
                   help="keep the nodes whose name contains NAME in float32 (repeatable)")
    p.add_argument("--no-fold-pads", action="store_true",
                   help="keep Pad nodes as exported (default: fold zero Pads into their Convs)")
    p.add_argument("--min-agreement", type=float, default=0.95,
                   help="refuse when fewer bits agree with the parent (default 0.95)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_quantize(args: argparse.Namespace) -> int:
    """Run ``rsir quantize`` from parsed arguments; prints a summary, returns the exit status."""
    res = quantize_bundle(
        args.bundle, args.calibration, args.out, precision=args.precision, method=args.method,
        reader=args.reader, count=args.count, check=args.check, seed=args.seed,
        per_channel=not args.per_tensor, quantize_hash_layer=args.quantize_hash_layer,
        fold_pads=not args.no_fold_pads, activations=args.activations,
        keep_float=args.keep_float or (), target_agreement=args.target_agreement,
        reduce_range=args.reduce_range,
        batch_size=args.batch_size, min_agreement=args.min_agreement, overwrite=args.overwrite,
    )
    if args.json:
        d = asdict(res)
        d["path"] = str(res.path)
        print(json.dumps(d, indent=2))
        return 0
    print(f"{res.precision} bundle written to {res.path} in {res.seconds:.0f}s")
    print(f"  encoder     {res.encoder_id} (parent {res.parent_encoder_id}); index its codes in a "
          f"collection of its own")
    print(f"  model       {res.model_bytes / 1e6:.2f} MB (parent {res.parent_model_bytes / 1e6:.2f} MB)")
    if res.precision == "int8":
        print(f"  calibration {res.calibration_images} images, {res.method}")
    if len(res.attempts) > 1:
        tried = ", ".join(f"{a['leading_float']} -> {a['bit_agreement']:.4%}" for a in res.attempts)
        print(f"  retries     leading layers kept in float -> agreement: {tried}")
    if res.precision == "int8":
        print(f"  float32     {len(res.float_layers)} weighted layer(s): "
              f"{', '.join(res.float_layers[:8])}{' ...' if len(res.float_layers) > 8 else ''}")
    print(f"  agreement   {res.bit_agreement:.4%} of bits, {res.codes_identical:.1%} of codes "
          f"identical on {res.check_images} {res.check_set} images")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rsir_sdk.quantize BUNDLE --calibration DIR --out OUT``."""
    p = argparse.ArgumentParser(prog="rsir quantize", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        return cmd_quantize(args)
    except RsirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
