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
real images of the archive read through the bundle's own preprocessing
(:mod:`.calibration`). Zero ``Pad`` nodes ("same" padding) are first folded into their Convs
(:func:`rsir_train.graph.fold_static_pads`), which the input size fixed by the bundle allows.
Three parts stay in float32 on purpose (:func:`rsir_train.graph.float_region`): the
preprocessing at the input, the hash layer (the last weighted op before ``embedding``: it
decides every bit's sign) and the bit packing after ``embedding`` (its sums must stay exact);
and, in a bundle with a fine code (issue 20), its head and packing (the nodes only
``fine_codes`` depends on), for the same reasons.
When the int8 bits agree with the parent's on less than ``target_agreement`` (99%) of held-out
bits, it quantizes again keeping the first 3, 6, 12, 24 weighted layers in float too.

The derived bundle is written through :func:`rsir_sdk.bundle_writer.write_bundle` like every
other: the parent's split and archive record, and for AHCL the parent's learned database codes
V (so that ``Retriever(int8_bundle).add_learned_codes()`` fills a collection of the int8
identity; see ``docs/edge.md``). ``onnx`` and ``onnxruntime.quantization`` are imported when
called, so importing this module pulls neither (nor torch).

>>> res = quantize_bundle("runs/bundles/ahcl-nwpu12-64", "data/nwpu12",
...                       "runs/bundles/ahcl-nwpu12-64-int8",
...                       QuantizeOptions(count=256, method="percentile"))      # doctest: +SKIP
>>> res.bit_agreement, res.encoder_id                                             # doctest: +SKIP
(0.994629, 'fcdf053a7725fcc7')
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rsir_sdk import staging
from rsir_sdk.bundle import MANIFEST_FILE, Bundle
from rsir_sdk.bundle_writer import BUNDLE_FILES, update_manifest, write_bundle

from ..errors import QuantizeError
from ..graph import WEIGHTED_OPS, float_region, fold_static_pads, name_nodes
from .calibration import CalibrationReader, CalibrationSet, calibration_set, check_readable
from .options import PRECISIONS, QuantizeOptions
from .quantizers import (
    CALIBRATION_METHODS,
    agreement,
    convert_fp16,
    ort_version,
    pre_process,
    quantize_int8,
)

__all__ = ["LEADING_SCHEDULE", "PRECISIONS", "QuantizeOptions", "QuantizeResult",
           "quantize_bundle"]

#: how many leading weighted layers to keep in float on successive tries (see target_agreement)
LEADING_SCHEDULE = (3, 6, 12, 24)
Progress = Callable[[dict[str, Any]], None]


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
    #: fraction of fine-code bits equal to the parent's on the check images (None: no fine code)
    fine_bit_agreement: float | None = None


@dataclass
class _Derived:
    """The chosen child model and what was done to get it (for the manifest and the result)."""

    model_path: Path
    bit_agreement: float
    codes_identical: float
    info: dict[str, Any]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    leading_kept: list[str] = field(default_factory=list)


@dataclass
class _FloatPlan:
    """Which nodes stay float32: preprocessing, packing, the hash layer, the user's choice."""

    pre: list[str]
    pack: list[str]
    head: str | None
    keep_head: bool
    by_request: list[str]

    @property
    def exclude(self) -> list[str]:
        """Every node kept float32, once each (the parts' lists can share a node)."""
        head = [self.head] if self.keep_head and self.head else []
        return list(dict.fromkeys(self.pre + self.pack + head + self.by_request))


def _require_onnx() -> Any:
    try:
        import onnx
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise QuantizeError(
            f"quantization needs the onnx package (and onnxruntime): pip install onnx ({exc})"
        ) from None
    return onnx


def _check_request(parent: Bundle, out: Path, overwrite: bool) -> None:
    """Refuse a derived parent or an ``out`` that is the parent, a file, or not empty."""
    if parent.manifest.get("parent"):
        raise QuantizeError(
            f"bundle {parent.path} is itself derived (from encoder "
            f"{parent.manifest['parent'].get('encoder_id')}); quantize the fp32 parent instead"
        )
    if out.resolve() == parent.path.resolve():
        raise QuantizeError("--out must be a new folder, not the parent bundle itself")
    if out.exists() and not out.is_dir():
        raise QuantizeError(f"--out {out} is a file; give a folder for the new bundle")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise QuantizeError(f"{out} exists and is not empty: choose another --out, or replace "
                            f"it with --overwrite (overwrite=True from Python)")


@dataclass
class _Graph:
    """The parent's graph with named nodes, Pads folded and onnxruntime's pre-processing done."""

    model: Any
    path: Path  # the same graph on disk, what the quantizer reads
    folded: int
    pre_processed: bool


def _prepared_graph(onnx: Any, parent: Bundle, work: Path, opts: QuantizeOptions) -> _Graph:
    model = onnx.load(str(parent.model_path))
    name_nodes(model)
    folded = fold_static_pads(model, parent.input_name, parent.input_height,
                              parent.input_width) if opts.fold_pads else 0
    named = work / "named.onnx"
    onnx.save_model(model, str(named))
    pre_processed = opts.precision == "int8" and pre_process(named, work / "pre.onnx")
    if pre_processed:
        named = work / "pre.onnx"
        model = onnx.load(str(named))
    return _Graph(model, named, folded, bool(pre_processed))


@dataclass(frozen=True)
class _CheckSet:
    """The images the derived codes are compared on, and which set they are."""

    paths: list[str]
    name: str  # "held-out" (disjoint from calibration) or "calibration"

    @classmethod
    def of(cls, calib: CalibrationSet, int8: bool) -> "_CheckSet":
        paths = (calib.check_paths or calib.paths) if int8 else calib.paths
        return cls(list(paths), "held-out" if (calib.check_paths or not int8) else "calibration")


def _float_plan(model: Any, parent: Bundle, precision: str, quantize_hash_layer: bool,
                keep_float: Sequence[str]) -> _FloatPlan:
    fine = [parent.fine_output] if parent.fine_output else []
    pre, pack, head = float_region(model, parent.embedding_output, fine)
    keep_head = precision == "int8" and not quantize_hash_layer and head is not None
    fixed = pre + pack + ([head] if keep_head and head else [])
    by_request = [n.name for n in model.graph.node
                  if any(pat in n.name for pat in keep_float) and n.name not in fixed]
    if keep_float and not by_request:
        raise QuantizeError(f"--keep-float {list(keep_float)} matches no node of the model")
    return _FloatPlan(pre, pack, head, keep_head, by_request)


def _copy_metadata(src: Any, dst: Any, parent: Bundle, precision: str) -> None:
    props = {p.key: p.value for p in src.metadata_props}
    props["rsir.precision"] = precision
    props["rsir.parent_sha256"] = parent.model_sha256
    del dst.metadata_props[:]
    for k, v in props.items():
        e = dst.metadata_props.add()
        e.key, e.value = k, v
    dst.doc_string = (src.doc_string + f" [{precision} derived from {parent.encoder_id}]").strip()


def _int8(onnx: Any, graph: _Graph, parent: Bundle, plan: _FloatPlan, calib: CalibrationSet,
          work: Path, check: Callable[[Path], tuple[float, float]], options: QuantizeOptions,
          progress: Progress | None) -> _Derived:
    """Quantize, check, and retry with more leading layers in float until the target is met."""
    named, model = graph.path, graph.model
    target_agreement, batch_size = options.target_agreement, options.batch_size
    opts: dict[str, Any] = {"method": options.method, "per_channel": options.per_channel,
            "activations": options.activations, "reduce_range": options.reduce_range}
    exclude = plan.exclude
    # weighted layers in graph order, the candidates to keep in float when the agreement misses
    # its target: the first, highest-resolution layers are the most sensitive (docs/edge.md)
    leading = [n.name for n in model.graph.node
               if n.op_type in WEIGHTED_OPS and n.name not in exclude]
    schedule = [0] + ([k for k in LEADING_SCHEDULE if k < len(leading)] if target_agreement else [])
    best: tuple[int, _Derived] | None = None
    attempts: list[dict[str, Any]] = []
    for k in schedule:
        reader = CalibrationReader(calib.root, calib.paths, parent, batch_size, progress)
        path = work / f"q{k}.onnx"
        try:
            info = quantize_int8(named, path, reader, exclude=exclude + leading[:k],
                                 cache=work / "calibration.json", **opts)
        except QuantizeError:
            raise  # ours (an image), not onnxruntime's
        except Exception as exc:  # onnxruntime raises plain Exceptions of many kinds
            raise QuantizeError(f"onnxruntime could not quantize {parent.model_path}: {exc}") from exc
        child = onnx.load(str(path))
        _copy_metadata(model, child, parent, "int8")
        onnx.save_model(child, str(path))
        bits, same = check(path)
        attempts.append({"leading_float": k, "bit_agreement": round(bits, 6)})
        if progress:
            progress({"event": "attempt", **attempts[-1]})
        if best is None or bits > best[1].bit_agreement:
            best = (k, _Derived(path, bits, same, info))
        if bits >= target_agreement:
            break
    assert best is not None
    k, derived = best
    derived.attempts, derived.leading_kept = attempts, leading[:k]
    return derived


def _fp16(onnx: Any, model: Any, parent: Bundle, plan: _FloatPlan, work: Path,
          check: Callable[[Path], tuple[float, float]]) -> _Derived:
    try:
        child = convert_fp16(model, plan.pre + plan.pack)
    except Exception as exc:
        raise QuantizeError(f"fp16 conversion of {parent.model_path} failed: {exc}") from exc
    _copy_metadata(model, child, parent, "fp16")
    path = work / "fp16.onnx"
    onnx.save_model(child, str(path))
    bits, same = check(path)
    return _Derived(path, bits, same, {"format": "float16 weights and activations (uint8 input "
                                                 "and float32 embedding kept)"})


def _parent_record(parent: Bundle, opts: QuantizeOptions, derived: _Derived, plan: _FloatPlan,
                   calib: CalibrationSet, calibration: str | os.PathLike, checked: _CheckSet,
                   graph: _Graph) -> dict[str, Any]:
    """The derived manifest's ``parent`` field (docs/edge.md)."""
    int8 = opts.precision == "int8"
    target_agreement, folded, pre_processed = opts.target_agreement, graph.folded, \
        graph.pre_processed
    return {
        "model_sha256": parent.model_sha256,
        "encoder_id": parent.encoder_id,
        "bundle": str(parent.path),
        "method": "onnxruntime static int8" if int8 else "fp16 cast",
        "quantization": {
            **derived.info,
            "kept_float32": {"preprocessing": len(plan.pre), "packing": len(plan.pack),
                             "hash_layer": plan.head if plan.keep_head else None,
                             "by_request": plan.by_request,
                             "leading_layers": derived.leading_kept},
            "target_agreement": target_agreement if int8 else None,
            "attempts": derived.attempts,
            "pads_folded_into_conv": folded,
            "pre_processed": pre_processed,
            "onnxruntime": ort_version(),
        },
        "calibration": {
            "source": str(Path(calibration)),
            "reader": calib.reader,
            "count": len(calib.paths) if int8 else 0,
            "seed": calib.seed,
            "fingerprint": calib.fingerprint() if int8 else None,
            "paths": calib.paths if int8 else [],
            "note": calib.note if int8 else
            "fp16 needs no calibration: these images only measured agreement",
        },
        "bit_agreement": round(derived.bit_agreement, 6),
        **_fine_agreement(parent, derived, calib, checked, opts),
        "agreement": {"images": len(checked.paths), "set": checked.name,
                      "codes_identical": round(derived.codes_identical, 6)},
        "note": "training.metrics are the parent's fp32 figures",
    }


def _fine_agreement(parent: Bundle, derived: _Derived, calib: CalibrationSet,
                    checked: _CheckSet, opts: QuantizeOptions) -> dict[str, Any]:
    """``{"fine_bit_agreement": ...}`` on the check images for a parent with a fine code
    (issue 20; its head stays in float), else nothing. Recorded, not a refusal criterion:
    the retrieval codes' agreement decides, as before."""
    if not parent.fine_output:
        return {}
    bits, _ = agreement(parent, derived.model_path, calib.root, checked.paths, opts.batch_size,
                        opts.providers, opts.threads, output=parent.fine_output)
    return {"fine_bit_agreement": round(bits, 6)}


def _write_derived(onnx: Any, stage: Path, parent: Bundle, derived: _Derived, precision: str,
                   record: dict[str, Any]) -> None:
    """Write the derived bundle at ``stage`` through the one bundle writer."""
    manifest = json.loads(json.dumps(parent.manifest))
    for key in ("model_sha256", "database", "model_file"):
        manifest.pop(key, None)
    manifest["precision"] = precision
    manifest["parent"] = record
    database = None
    if parent.has_database:
        db = parent.load_database()
        database = {"codes": db.codes, "ids": db.ids, "labels": db.labels, "paths": db.paths,
                    "kind": db.kind, "fine": db.fine}
    split = parent.split() if (parent.path / "split.json").is_file() else None
    write_bundle(stage, onnx.load(str(derived.model_path)), manifest, database, split=split,
                 archive=parent.manifest.get("archive"))
    if database is not None:
        update_manifest(stage, database={"source": f"parent {parent.encoder_id}"})
    Bundle.load(stage)  # the reader must accept what was written


def quantize_bundle(
    bundle: Bundle | str | os.PathLike,
    calibration: str | os.PathLike,
    out: str | os.PathLike,
    options: QuantizeOptions | None = None,
    *,
    progress: Progress | None = None,
    **overrides: Any,
) -> QuantizeResult:
    """Write a derived bundle at ``out`` with an int8 (or fp16) encoder; return what it measured.

    ``calibration``: an archive folder, an image folder or a CSV file (see
    :func:`~rsir_train.quantize.calibration.calibration_set`). ``options``: a
    :class:`~rsir_train.quantize.options.QuantizeOptions` (precision, calibration, what stays
    float, the agreement targets); keyword ``overrides`` are its field names
    (``quantize_bundle(b, cal, out, count=64)`` is ``quantize_bundle(b, cal, out,
    QuantizeOptions(count=64))``). Raises :class:`~rsir_train.errors.QuantizeError` and writes
    nothing when the bits agree with the parent's on less than ``min_agreement``; below
    ``target_agreement`` it quantizes again keeping the first 3, 6, 12, 24 weighted layers in
    float, keeping the first attempt that reaches it, else the best. ``progress`` sees
    calibration and attempt events. The bundle is assembled in a temporary folder and moved to
    ``out`` only when complete.
    """
    opts = QuantizeOptions.build(options, overrides)
    onnx = _require_onnx()
    t0 = time.perf_counter()
    parent = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    out = Path(out)
    _check_request(parent, out, opts.overwrite)
    int8 = opts.precision == "int8"
    # fp16 needs no calibration: the images only measure agreement
    calib = calibration_set(calibration, parent, reader=opts.reader,
                            count=opts.count if int8 else opts.check,
                            check=opts.check if int8 else 0, seed=opts.seed)
    check_readable(calib)  # all unreadable images named at once, before any work
    checked = _CheckSet.of(calib, int8)
    target = Path(os.path.realpath(out.absolute()))  # a link: the folder it names
    target.parent.mkdir(parents=True, exist_ok=True)
    # the work folder beside the target, named as rsir_sdk.staging names stages, so the next
    # run removes what a killed one left (a temporary folder of its own name stayed for good)
    staging.recover(target)
    work = (staging.new_stage(target) if os.access(target.parent, os.W_OK)
            else Path(tempfile.mkdtemp(prefix="rsir-quantize-")))  # never inside out
    try:
        graph = _prepared_graph(onnx, parent, work, opts)
        plan = _float_plan(graph.model, parent, opts.precision, opts.quantize_hash_layer,
                           opts.keep_float)
        derived = _derive(onnx, graph, parent, plan, calib, checked, work, opts, progress)
        record = _parent_record(parent, opts, derived, plan, calib, calibration, checked, graph)
        stage = work / "bundle"
        _write_derived(onnx, stage, parent, derived, opts.precision, record)
        # swapped in whole: a kill leaves the old bundle or the new one (rsir_sdk.staging)
        with staging.writing(target):
            staging.install(stage, target, BUNDLE_FILES, MANIFEST_FILE)
    finally:
        staging.discard(work)
    return _result(out, parent, derived, plan, graph, calib, checked, opts,
                   time.perf_counter() - t0)


def _derive(onnx: Any, graph: _Graph, parent: Bundle, plan: _FloatPlan, calib: CalibrationSet,
            checked: _CheckSet, work: Path, opts: QuantizeOptions,
            progress: Progress | None) -> _Derived:
    """The derived model, checked against the parent; refused below ``min_agreement``."""
    precision = opts.precision
    if progress:
        progress({"event": "check", "images": len(checked.paths)})

    def check_codes(path: Path) -> tuple[float, float]:
        try:
            return agreement(parent, path, calib.root, checked.paths, opts.batch_size,
                             opts.providers, opts.threads)
        except QuantizeError:
            raise  # ours (an image), not onnxruntime's
        except Exception as exc:  # onnxruntime raises plain Exceptions of many kinds
            raise QuantizeError(
                f"the {precision} model does not run on {opts.providers or 'CPU'}: {exc}"
            ) from exc

    if precision == "int8":
        derived = _int8(onnx, graph, parent, plan, calib, work, check_codes, opts, progress)
    else:
        derived = _fp16(onnx, graph.model, parent, plan, work, check_codes)
    if derived.bit_agreement < opts.min_agreement:
        raise QuantizeError(
            f"the {precision} encoder agrees with its parent on only "
            f"{derived.bit_agreement:.4f} of the bits (< {opts.min_agreement}); nothing written. "
            f"Keep sensitive layers in float (--keep-float NAME; the first layers usually "
            f"are), use more calibration images (--count) or another --method"
        )
    return derived


def _result(out: Path, parent: Bundle, derived: _Derived, plan: _FloatPlan, graph: _Graph,
            calib: CalibrationSet, checked: _CheckSet, opts: QuantizeOptions,
            seconds: float) -> QuantizeResult:
    """What :func:`quantize_bundle` returns, read back from the written bundle."""
    written = Bundle.load(out)
    int8 = opts.precision == "int8"
    weighted = {n.name for n in graph.model.graph.node if n.op_type in WEIGHTED_OPS}
    return QuantizeResult(
        path=out, precision=opts.precision, encoder_id=written.encoder_id,
        parent_encoder_id=parent.encoder_id, bit_agreement=derived.bit_agreement,
        codes_identical=derived.codes_identical, check_images=len(checked.paths),
        check_set=checked.name, calibration_images=len(calib.paths) if int8 else 0,
        method=CALIBRATION_METHODS[opts.method] if int8 else "none",
        model_bytes=written.model_path.stat().st_size,
        parent_model_bytes=parent.model_path.stat().st_size,
        seconds=seconds,
        float_layers=([plan.head] if plan.keep_head and plan.head else []) + derived.leading_kept
        + [n for n in plan.by_request if n in weighted],
        attempts=derived.attempts,
        excluded_nodes=plan.exclude + derived.leading_kept,
        fine_bit_agreement=written.manifest["parent"].get("fine_bit_agreement"),
    )
