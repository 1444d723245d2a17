"""Write a model bundle (docs/bundle.md): ``model.onnx`` + ``manifest.json`` (+ database, split).

The writer sits beside the reader (:mod:`rsir_sdk.bundle`) so that the format is defined in one
place. It is torch-free: training (AHCL, MiLAN, the label-free method), quantization and the
runtime tests all write bundles through :func:`write_bundle`. It needs the ``onnx`` package
(imported when called), which the runtime itself does not.

>>> write_bundle("bundle/", onnx_model, {"method": "ahcl", "bits": 64, "preprocess": {...}},
...              database={"codes": codes, "ids": ids}, split=split, archive_root="/data/x")
...                                                                        # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from . import staging
from .bundle import DATABASE_FILE, FORMAT_VERSION, MANIFEST_FILE, MODEL_FILE, file_sha256
from .errors import BundleError
from .splits import SPLIT_FILE, Split, save_split

if TYPE_CHECKING:  # pragma: no cover
    import onnx  # noqa: TID251 - types only


#: the files a bundle folder holds; others there (a user's notes) are kept when it is rewritten
BUNDLE_FILES = (MODEL_FILE, MANIFEST_FILE, DATABASE_FILE, SPLIT_FILE)


class BundleWriteError(BundleError):
    """The manifest or database given to :func:`write_bundle` is incomplete or inconsistent."""


def complete_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``manifest`` with the format's defaults filled in and checked."""
    m = json.loads(json.dumps(manifest))  # a deep copy that is certainly JSON-serialisable
    for key in ("method", "bits", "preprocess"):
        if key not in m:
            raise BundleWriteError(f"manifest needs the field '{key}'")
    bits = int(m["bits"])
    if bits < 8 or bits % 8 or bits > 32768:
        raise BundleWriteError(f"manifest 'bits' must be a multiple of 8 in 8..32768, got {bits}")
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
    m.setdefault("archive", None)
    if m["bit_order"] != "big":
        raise BundleWriteError("bit_order must be 'big' (numpy.packbits order)")
    if (int(m["input"]["height"]), int(m["input"]["width"])) != (h, w):
        raise BundleWriteError(
            f"input size {m['input']['height']}x{m['input']['width']} differs from "
            f"preprocess.crop {h}x{w}"
        )
    return m


def _set_metadata(model: "onnx.ModelProto", m: dict[str, Any]) -> None:
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
    fine = m.get("fine_code")
    if fine:
        props.update({"rsir.fine_code": json.dumps(fine), "rsir.fine_bits": str(int(fine["bits"])),
                      "rsir.fine_kind": str(fine["kind"]), "rsir.fine_output": str(fine["output"])})
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.append(p)
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def _fine_record(model: "onnx.ModelProto", m: dict[str, Any]) -> None:
    """Record the fine code (issue 20, docs/bundle.md) in ``m``: from the manifest given, else
    from the model's ``rsir.fine_code`` metadata (what the export wrote); checked against the
    graph's outputs. A model without one leaves the manifest without ``fine_code``."""
    fine = m.get("fine_code")
    if not fine:
        props = {p.key: p.value for p in model.metadata_props}
        if "rsir.fine_code" not in props:
            m.pop("fine_code", None)
            return
        fine = json.loads(props["rsir.fine_code"])
    if not isinstance(fine, dict) or "bits" not in fine or "kind" not in fine:
        raise BundleWriteError("manifest 'fine_code' needs 'kind' and 'bits'")
    bits = int(fine["bits"])
    if bits < 8 or bits % 8:
        raise BundleWriteError(f"fine_code 'bits' must be a positive multiple of 8, got {bits}")
    name = str(fine.get("output") or m["outputs"].get("fine_codes") or "fine_codes")
    if name not in {o.name for o in model.graph.output}:
        raise BundleWriteError(f"manifest records a fine code but the model has no output "
                               f"'{name}'")
    fine = {"threshold": 0.0, "bit_order": "big", "fitted_on": "", **fine, "bits": bits,
            "output": name}
    m["fine_code"] = fine
    m["outputs"] = {**m["outputs"], "fine_codes": name}


def _write_database(out: Path, database: Mapping[str, Any], bits: int,
                    fine_bits: int | None = None) -> dict[str, Any]:
    """``database.npz`` (codes, ids, labels, paths and, when given, the database images' fine
    codes ``fine`` ``uint8 (n, fine_bits/8)``) and the manifest's ``database`` record."""
    if "codes" not in database:
        raise BundleWriteError("database needs 'codes' (uint8 (n, bits/8), packed big-endian)")
    codes = np.ascontiguousarray(database["codes"])
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] * 8 != bits:
        raise BundleWriteError(
            f"database codes must be uint8 (n, {bits // 8}) packed, got {codes.dtype} {codes.shape}"
        )
    n = codes.shape[0]
    arrays: dict[str, Any] = {"codes": codes}
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
    fine = _database_fine(database.get("fine"), n, fine_bits)
    if fine is not None:
        arrays["fine"] = fine
    np.savez(out / DATABASE_FILE, **arrays)
    # the codes are part of what the encoder id stands for: Bundle.load_database checks them
    record = {"file": DATABASE_FILE, "count": n, "codes": str(database.get("kind", "learned")),
              "sha256": file_sha256(out / DATABASE_FILE)}
    if fine is not None:
        record["fine_bits"] = int(fine.shape[1] * 8)
    return record


def _database_fine(fine: Any, n: int, fine_bits: int | None) -> np.ndarray | None:
    """The database's fine codes checked against the bundle's fine code (issue 20)."""
    if fine is None:
        return None
    if fine_bits is None:
        raise BundleWriteError("database 'fine' codes given but the model has no fine code")
    arr = np.ascontiguousarray(fine)
    if arr.dtype != np.uint8 or arr.shape != (n, fine_bits // 8):
        raise BundleWriteError(f"database fine codes must be uint8 ({n}, {fine_bits // 8}) "
                               f"packed, got {arr.dtype} {arr.shape}")
    return arr


def archive_record(root: str | os.PathLike, name: str = "", fingerprint: str = "") -> dict[str, Any]:
    """The manifest's ``archive`` field: where the bundle's images live (absolute path)."""
    return {"root": os.path.abspath(root), "name": name or Path(os.path.abspath(root)).name,
            "fingerprint": fingerprint}


def write_bundle(
    out_dir: str | os.PathLike,
    onnx_model: "onnx.ModelProto | str | os.PathLike",
    manifest: Mapping[str, Any],
    database: Mapping[str, Any] | None = None,
    *,
    split: Split | None = None,
    archive: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a bundle folder and return the manifest as written.

    Fills the manifest's defaults (format version, bit order, input from ``preprocess.crop``,
    outputs, the fine code recorded by the export: :func:`_fine_record`), copies its facts into the model's ``metadata_props``, saves ``model.onnx`` in one
    file (no external data, so the sha256 recorded as the encoder's identity covers every
    weight), writes ``database.npz`` when ``database`` (``codes`` packed ``uint8 (n, bits/8)``
    and optional ``ids``, ``labels``, ``paths``, ``kind`` = "learned" | "encoded", ``fine``: the
    database images' fine codes ``uint8 (n, fine_bits/8)``) is given,
    with its sha256 in the manifest's ``database.sha256`` (checked when the codes are loaded),
    ``split.json`` when ``split`` is, and records ``archive`` (see :func:`archive_record`).
    """
    try:
        import onnx  # noqa: TID251 - writing a bundle is authoring; the runtime's paths never get here
    except ImportError:
        raise BundleWriteError(
            "writing a bundle needs the onnx package: pip install onnx"
        ) from None
    m = _completed(manifest)
    out = Path(os.path.realpath(os.path.abspath(out_dir)))  # a link: the folder it names
    if out.exists() and not out.is_dir():
        raise BundleWriteError(f"{out} exists and is not a folder: give a folder for the bundle")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with staging.writing(out):  # one writer of this bundle at a time
            stage = staging.stage_for(out)
            try:
                m = _write_files(stage, onnx, onnx_model, m, database, split, archive)
                _check_written(stage, out)
                staging.install(stage, out, BUNDLE_FILES, MANIFEST_FILE)
            finally:
                staging.discard(stage)
    except OSError as exc:
        raise BundleWriteError(f"cannot write the bundle {out}: {exc.strerror or exc} "
                               f"({getattr(exc, 'filename', None) or out})") from None
    return m


def _completed(manifest: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return complete_manifest(manifest)
    except (TypeError, ValueError, KeyError) as exc:
        raise BundleWriteError(f"the manifest cannot be completed: {type(exc).__name__}: "
                               f"{exc}") from None


def _write_files(out: Path, onnx: Any, onnx_model: Any, m: dict[str, Any],
                 database: Mapping[str, Any] | None, split: Split | None,
                 archive: Mapping[str, Any] | None) -> dict[str, Any]:
    """The bundle's files in the (new, empty) folder ``out``; the manifest as written."""
    if archive is not None:
        m["archive"] = dict(archive)
    if isinstance(onnx_model, (str, os.PathLike)):
        model = onnx.load(str(onnx_model))
    else:
        model = onnx.ModelProto()
        model.CopyFrom(onnx_model)
    _fine_record(model, m)
    _set_metadata(model, m)
    model_path = out / MODEL_FILE
    onnx.save_model(model, str(model_path), save_as_external_data=False)
    m["model_sha256"] = file_sha256(model_path)
    if database is not None:
        fine_bits = int(m["fine_code"]["bits"]) if m.get("fine_code") else None
        m["database"] = _write_database(out, database, int(m["bits"]), fine_bits)
    else:
        m["database"] = None
    if split is not None:
        save_split(split, out / SPLIT_FILE)
    (out / MANIFEST_FILE).write_text(json.dumps(m, indent=2), encoding="utf-8")
    return m


def _check_written(stage: Path, out: Path) -> None:
    """Load what was written as the runtime will (manifest and graph): a bundle the runtime
    refuses is not put in place (a bundle already at ``out`` is kept) and the reason is raised
    here, at export, not at the user's first search. Why: ``bits`` that do not match the
    graph, an ``outputs.codes`` the graph lacks or an input size it was not built for were
    written without a word."""
    from .encoder import Encoder
    from .errors import BundleError

    try:
        Encoder(stage, threads=1)
    except BundleError as exc:
        reason = str(exc).replace(str(stage), str(out))
        raise BundleWriteError(f"the bundle written for {out} does not load, so it was not put "
                               f"there: {reason}") from None


def update_manifest(out_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into a written bundle's manifest (e.g. metrics measured after writing).

    Only the manifest changes; the model and its identity do not. The new manifest replaces
    the old in one step (written beside it, then renamed), so an interrupted update leaves the
    old one.
    """
    path = Path(out_dir) / MANIFEST_FILE
    m = json.loads(path.read_text(encoding="utf-8"))
    for key, value in fields.items():
        if isinstance(value, Mapping) and isinstance(m.get(key), dict):
            m[key].update(json.loads(json.dumps(value)))
        else:
            m[key] = json.loads(json.dumps(value))
    staging.replace_text(path, json.dumps(m, indent=2))
    return m
