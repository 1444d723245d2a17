"""Write a model bundle (docs/bundle.md): ``model.onnx`` + ``manifest.json`` (+ ``database.npz``).

Torch-free on purpose (onnx, numpy, json, hashlib only): runtime tests build bundles from a
hand-made ``onnx.helper`` graph with :func:`write_bundle`, exactly as training does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rsir_sdk.bundle import file_sha256

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
DATABASE_FILE = "database.npz"


class BundleWriteError(ValueError):
    """The manifest or database given to :func:`write_bundle` is incomplete or inconsistent."""


def _complete_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    m = json.loads(json.dumps(manifest))  # a deep copy that is certainly JSON-serialisable
    for key in ("method", "bits", "preprocess"):
        if key not in m:
            raise BundleWriteError(f"manifest needs the field '{key}'")
    bits = int(m["bits"])
    if bits < 8 or bits % 8:
        raise BundleWriteError(f"manifest 'bits' must be a positive multiple of 8, got {bits}")
    pre = m["preprocess"]
    if "crop" not in pre or "mean" not in pre or "std" not in pre:
        raise BundleWriteError("manifest 'preprocess' needs 'crop', 'mean' and 'std'")
    crop = pre["crop"]
    h, w = (crop, crop) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))
    pre.setdefault("resize", None)
    pre.setdefault("interpolation", "bilinear")
    pre.setdefault("scale", 1.0 / 255.0)
    m.setdefault("format_version", FORMAT_VERSION)
    m.setdefault("code_threshold", 0.0)
    m.setdefault("bit_order", "big")
    m["model_file"] = MODEL_FILE
    m.setdefault(
        "input",
        {"name": "images", "layout": "NHWC", "dtype": "uint8", "height": h, "width": w,
         "channels": "RGB"},
    )
    m.setdefault("outputs", {"embedding": "embedding", "codes": "codes"})
    m.setdefault("classes", [])
    m.setdefault("database", None)
    m.setdefault("symmetric", False)
    m.setdefault("training", {})
    m.setdefault("parent", None)
    if m["bit_order"] != "big":
        raise BundleWriteError("bit_order must be 'big' (numpy.packbits order)")
    if (int(m["input"]["height"]), int(m["input"]["width"])) != (h, w):
        raise BundleWriteError(
            f"input size {m['input']['height']}x{m['input']['width']} differs from "
            f"preprocess.crop {h}x{w}"
        )
    return m


def _set_metadata(model: onnx.ModelProto, m: dict[str, Any]) -> None:
    props = {
        "rsir.format_version": str(m["format_version"]),
        "rsir.method": str(m["method"]),
        "rsir.bits": str(int(m["bits"])),
        "rsir.code_threshold": repr(float(m["code_threshold"])),
        "rsir.bit_order": str(m["bit_order"]),
        "rsir.input": json.dumps(m["input"]),
        "rsir.preprocess": json.dumps(m["preprocess"]),
        "rsir.classes": json.dumps(m["classes"]),
    }
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.append(p)
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def _write_database(out: Path, database: dict[str, Any], bits: int) -> dict[str, Any]:
    if "codes" not in database:
        raise BundleWriteError("database needs 'codes' (uint8 (n, bits/8), packed big-endian)")
    codes = np.ascontiguousarray(database["codes"])
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] * 8 != bits:
        raise BundleWriteError(
            f"database codes must be uint8 (n, {bits // 8}) packed, got {codes.dtype} {codes.shape}"
        )
    n = codes.shape[0]
    arrays = {"codes": codes}
    for key in ("ids", "labels", "paths"):
        values = database.get(key)
        if values is None:
            values = [str(i) for i in range(n)] if key == "ids" else [""] * n
        arr = np.asarray([str(v) for v in values], dtype=np.str_)
        if arr.shape != (n,):
            raise BundleWriteError(f"database '{key}' has {arr.shape[0]} entries for {n} codes")
        arrays[key] = arr
    if len(set(arrays["ids"].tolist())) != n:
        raise BundleWriteError("database 'ids' must be unique")
    np.savez(out / DATABASE_FILE, **arrays)
    return {"file": DATABASE_FILE, "count": n, "codes": str(database.get("kind", "learned"))}


def write_bundle(
    out_dir: str | os.PathLike,
    onnx_model: onnx.ModelProto,
    manifest: dict,
    database: dict | None,
) -> dict:
    """Write a bundle folder and return the manifest as written.

    Fills the manifest's defaults (format version, bit order, input from ``preprocess.crop``,
    outputs), copies its facts into the model's ``metadata_props``, saves ``model.onnx``
    (no external data), records its sha256, and writes ``database.npz`` when ``database`` (a
    dict with ``codes`` packed ``uint8 (n, bits/8)`` and optional ``ids``, ``labels``,
    ``paths`` and ``kind`` = "learned" | "encoded") is given.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = _complete_manifest(manifest)
    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    _set_metadata(model, m)
    model_path = out / MODEL_FILE
    onnx.save_model(model, str(model_path))
    m["model_sha256"] = file_sha256(model_path)
    if database is not None:
        m["database"] = _write_database(out, database, int(m["bits"]))
    else:
        m["database"] = None
        stale = out / DATABASE_FILE
        if stale.exists():
            stale.unlink()
    (out / MANIFEST_FILE).write_text(json.dumps(m, indent=2), encoding="utf-8")
    return m
