"""The fields of a bundle's ``manifest.json``, checked: what :meth:`rsir_sdk.Bundle.load` reads.

Why a module of its own: every malformed or missing field must be refused at load with one
line naming the bundle, the file and the field (a bad value found later would be a fault of
each image encoded), and those checks are most of the reading. The format is in
``docs/bundle.md``.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from pathlib import Path
from typing import Any

from .codes import SceneTest, validate_bits
from .errors import BundleError, CodeLengthError

# the logger these checks had in rsir_sdk.bundle: a user's logging settings keep applying
log = logging.getLogger("rsir_sdk.bundle")

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
#: Pillow resampling filters a bundle's ``preprocess.interpolation`` may name
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box")


def read_fields(root: Path, manifest: dict[str, Any]) -> tuple:
    """The manifest fields every bundle needs, checked; raises on anything malformed."""
    version = require(manifest, "format_version", None, root)
    if isinstance(version, (bool, str)) or int(version) != float(version) or int(version) < 1:
        raise BundleError(f"bundle {root}: format_version must be a positive integer, got {version!r}")
    if int(version) > FORMAT_VERSION:
        raise BundleError(
            f"bundle {root} has format_version {version}; this rsir-sdk reads up to "
            f"{FORMAT_VERSION}: upgrade rsir-sdk"
        )
    method = require(manifest, "method", None, root)
    if not isinstance(method, str) or not method:
        raise BundleError(f"bundle {root}: field 'method' must be a non-empty string")
    bits = _code_length(root, manifest, "", require(manifest, "bits", None, root))
    model_file = manifest.setdefault("model_file", MODEL_FILE)
    if (not isinstance(model_file, str) or not model_file or Path(model_file).name != model_file
            or model_file in (".", "..")):
        raise BundleError(
            f"bundle {root}: model_file must be a file name inside the bundle folder, got "
            f"{model_file!r}"
        )
    inp = require(manifest, "input", None, root)
    pre = require(manifest, "preprocess", None, root)
    if not isinstance(inp, dict) or not isinstance(pre, dict):
        raise BundleError(f"bundle {root}: fields 'input' and 'preprocess' must be JSON objects")
    _check_input(root, inp)
    height = _int_field(root, require(inp, "height", "input", root), "input.height")
    width = _int_field(root, require(inp, "width", "input", root), "input.width")
    if height < 1 or width < 1:
        raise BundleError(f"bundle {root}: input size {height}x{width} is not positive")
    _check_preprocess(root, pre, height, width)
    outputs = manifest.get("outputs", {"embedding": "embedding", "codes": "codes"})
    if not isinstance(outputs, dict):
        raise BundleError(f"bundle {root}: field 'outputs' must be a JSON object")
    declared = manifest.get("model_sha256")
    if isinstance(declared, str):
        declared = declared.lower()  # hex digits in either case name the same hash
    if not isinstance(declared, str) or len(declared) != 64:
        raise BundleError(
            f"bundle {root}: {MANIFEST_FILE} has no valid model_sha256 (the encoder's identity); "
            f"write bundles with rsir_sdk.bundle_writer.write_bundle"
        )
    threshold = manifest.get("code_threshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold):
        raise _field_error(root, "code_threshold", threshold, "a finite number")
    if not isinstance(manifest.get("classes", []), list):
        raise BundleError(f"bundle {root}: field 'classes' must be a list")
    return method, bits, model_file, height, width, inp, pre, outputs, declared


#: the ``preprocess`` fields the runtime reads
PREPROCESS_FIELDS = ("resize", "crop", "interpolation", "scale", "mean", "std")


def preparation(pre: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``preprocess`` that decide the pixels a model sees (resize, crop,
    resampling), in one normal form: what a collection records and compares."""
    crop, resize = pre.get("crop"), pre.get("resize")
    return {"resize": None if resize is None else int(resize),
            "crop": [int(c) for c in crop] if isinstance(crop, list) else [int(crop or 0)] * 2,
            "interpolation": str(pre.get("interpolation") or "bilinear").lower()}


def _check_input(root: Path, inp: dict[str, Any]) -> None:
    """``input.layout``/``dtype``/``channels``, when given, must be what the runtime feeds:
    uint8 NHWC RGB pixels (a model that wants BGR or NCHW does it inside its graph)."""
    for key, only in (("layout", "NHWC"), ("dtype", "uint8"), ("channels", "RGB")):
        if key in inp and inp[key] != only:
            raise _field_error(root, f"input.{key}", inp[key],
                               f'"{only}": the runtime feeds the model uint8 NHWC RGB pixels '
                               f"(convert inside the graph)")


def _code_length(root: Path, record: dict[str, Any], prefix: str, raw: Any) -> int:
    """A code's ``bits`` (an int the codes module accepts) and its big-endian ``bit_order``,
    checked in one place for the retrieval code (``prefix=""``) and the fine code."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise BundleError(f"bundle {root}: field '{prefix}bits' must be an integer, got {raw!r}")
    try:
        bits = validate_bits(raw)
    except CodeLengthError as exc:
        raise BundleError(f"bundle {root}: field '{prefix}bits': {exc}") from None
    if record.get("bit_order", "big") != "big":
        raise BundleError(f"bundle {root}: field '{prefix}bit_order' must be 'big'")
    return bits


def fine_fields(root: Path, manifest: dict[str, Any],
                 outputs: dict[str, Any]) -> tuple[int | None, str | None]:
    """``(fine_bits, fine_output)`` from the manifest's optional ``fine_code`` record; both
    None for bundles without one (written before issue 20), which keep working."""
    fine = manifest.get("fine_code")
    if fine is None:
        return None, None
    if not isinstance(fine, dict) or "bits" not in fine:
        raise BundleError(f"bundle {root}: field 'fine_code' must be a JSON object with 'bits'")
    bits = _code_length(root, fine, "fine_code.", fine["bits"])
    name = outputs.get("fine_codes") or fine.get("output") or "fine_codes"
    return bits, str(name)


def read_scene_test(root: Path, manifest: dict[str, Any], fine_bits: int | None) -> SceneTest | None:
    """The fine code's same-scene test from its parts' ``test_weight`` (None: the whole code),
    checked: the parts must cover the fine code's bits exactly."""
    if fine_bits is None:
        return None
    parts, ratios = manifest["fine_code"].get("parts"), manifest["fine_code"].get("test_ratios")
    try:
        test = SceneTest.from_parts(parts)
        covered = sum(int(p["bits"]) for p in parts) if test is not None else fine_bits
    except (TypeError, ValueError, KeyError) as exc:
        raise BundleError(f"bundle {root}: field 'fine_code.parts' is malformed ({exc})") from None
    if ratios is not None:
        try:
            if test is None:
                raise ValueError("no part has a test_weight")
            test = SceneTest(test.tests, list(ratios))
        except (TypeError, ValueError) as exc:
            raise BundleError(f"bundle {root}: field 'fine_code.test_ratios' is malformed "
                              f"({exc})") from None
    if covered != fine_bits:
        raise BundleError(f"bundle {root}: field 'fine_code.parts' covers {covered} bits, "
                          f"not the fine code's {fine_bits}")
    return test


def _check_preprocess(root: Path, pre: dict[str, Any], height: int, width: int) -> None:
    """Every ``preprocess`` field the runtime uses, checked at load: a bad value is a fault of
    the bundle (one line naming the file and the field), not of each image encoded later."""
    unknown = sorted(set(pre) - set(PREPROCESS_FIELDS))
    for key in unknown:  # a misspelt field is a default silently applied: other pixels
        near = difflib.get_close_matches(key, PREPROCESS_FIELDS, n=1)
        log.warning("bundle %s: manifest.json field 'preprocess.%s' is not one the runtime "
                    "reads%s", root, key, f" (did you mean '{near[0]}'?)" if near else "")
    crop = require(pre, "crop", "preprocess", root)
    if isinstance(crop, list) and len(crop) == 2:
        crop_hw = tuple(_int_field(root, c, "preprocess.crop") for c in crop)
    else:
        crop_hw = (_int_field(root, crop, "preprocess.crop"),) * 2
    if crop_hw != (height, width):
        raise BundleError(
            f"bundle {root}: preprocess.crop {list(crop_hw)} differs from the input size "
            f"[{height}, {width}]"
        )
    for key in ("mean", "std"):
        vals = require(pre, key, "preprocess", root)
        if not isinstance(vals, list) or len(vals) != 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            raise _field_error(root, f"preprocess.{key}", vals, "3 numbers (RGB)")
    if any(float(v) == 0 for v in pre["std"]):
        raise _field_error(root, "preprocess.std", pre["std"], "3 numbers, none of them 0")
    resize = pre.get("resize")
    if resize is not None and _int_field(root, resize, "preprocess.resize") < 1:
        raise _field_error(root, "preprocess.resize", resize, "a positive integer or null")
    interpolation = pre.get("interpolation", "bilinear")
    if not isinstance(interpolation, str) or interpolation.lower() not in INTERPOLATIONS:
        raise _field_error(root, "preprocess.interpolation", interpolation,
                           f"one of {', '.join(INTERPOLATIONS)}")
    scale = pre.get("scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise _field_error(root, "preprocess.scale", scale, "a number")


def _int_field(root: Path, value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise _field_error(root, name, value, "an integer")
    return int(value)


def _field_error(root: Path, name: str, value: Any, expected: str) -> BundleError:
    shown = json.dumps(value) if len(json.dumps(value)) <= 80 else json.dumps(value)[:77] + "..."
    return BundleError(f"bundle {root}: {root / MANIFEST_FILE} field '{name}' is {shown}; "
                       f"it must be {expected}")


def require(obj: Any, key: str, where: str | None = None, root: Path | None = None) -> Any:
    if not isinstance(obj, dict) or key not in obj or obj[key] is None:
        name = f"{where}.{key}" if where else key
        place = f"bundle {root}: {root / MANIFEST_FILE}" if root is not None else "bundle manifest"
        raise BundleError(f"{place} is missing the field '{name}'")
    return obj[key]
