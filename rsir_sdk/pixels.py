"""Decoded pixels → RGB ``uint8 (H, W, 3)``, and the :class:`Raster` every reader returns.

The leaf of the image modules (no import of :mod:`rsir_sdk.images` or :mod:`rsir_sdk.tiff`):
conversion rules for PIL images and numpy arrays, applied in this order:

- palette (``P``), ``1``, ``L``, ``LA``, ``CMYK``, ``YCbCr`` … → RGB through Pillow's ``convert``;
- an alpha channel (``RGBA``/``LA``/``PA``) is dropped, not composited: the colour values are
  kept as stored (remote sensing alpha is usually a no-data mask, not transparency);
- 16-bit and 32-bit integer images (``I;16``, ``I``) are scaled linearly from their full type
  range to 0..255 (``value * 255 // 65535`` for 16-bit);
- float arrays must hold values in [0, 1] and are scaled by 255 and rounded; other float ranges
  are refused rather than guessed;
- numpy arrays: ``HxW`` (grayscale, replicated to 3 channels), ``HxWx1``, ``HxWx3`` (RGB),
  ``HxWx4`` (RGBA, alpha dropped), dtype ``uint8``, ``uint16`` (scaled as above), float or
  bool; other integer types (``int64`` from integer arithmetic, ``int16``, ``uint32``) are
  refused, since their range is a guess (0..255 values read as 16-bit data were black);
- a 32-bit ``I`` PIL image holding 8-bit values (max 1..255) is refused for the same reason.

These rules are for images whose raster rule is the default. Under another rule (a collection
of multispectral rasters), :func:`rsir_sdk.images.read_image` reads arrays and 16-bit/float PIL
images as raster samples, channels last, as it reads a TIFF's.

For a reader that shares its memory with others (``rsir serve``): :func:`image_size` reads the
pixel count from the header without decoding, and :func:`decode_reduced` decodes a large image
already shrunk (JPEG by the decoder, others by box averaging) before these rules apply.
"""

from __future__ import annotations

import errno
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .decoding import quiet_decoding
from .errors import ImageLoadError


@dataclass(frozen=True)
class Raster:
    """A decoded image: RGB ``uint8 (H, W, 3)`` and what is known about where it lies."""

    rgb: np.ndarray
    georef: dict[str, Any] = field(default_factory=dict)
    bands: int = 3
    dtype: str = "uint8"
    reader: str = "pillow"


def describe_source(src: Any) -> str:
    """A short, human-readable name for an image source, used in error messages."""
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    if isinstance(src, np.ndarray):
        return f"<array {src.dtype} {src.shape}>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.mode} {src.size}>"
    name = getattr(src, "name", None)
    return str(name) if isinstance(name, str) else f"<{type(src).__name__}>"


def check_file(src: str | os.PathLike, name: str | None = None) -> Path:
    """Return ``src`` as a Path, or raise :class:`ImageLoadError` unless it is a non-empty file."""
    path = Path(src)
    name = name or str(src)
    if not path.is_file():
        if path.is_symlink() and not path.exists():
            raise ImageLoadError(name, _dangling(path))
        raise ImageLoadError(name, "no such file" if not path.exists() else "not a file")
    if path.stat().st_size == 0:
        raise ImageLoadError(name, "the file is empty (0 bytes)")
    return path


def _dangling(path: Path) -> str:
    """Why a symbolic link leads to no file: a loop (to itself, or links that lead back), or a
    target that is missing."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"a symbolic link loop (to {os.readlink(path)})"
    return f"a broken link (to {os.readlink(path)})"


def pil_to_rgb(img: Image.Image, name: str = "<PIL image>") -> np.ndarray:
    """Convert a PIL image to RGB ``uint8`` by the rules in this module's docstring."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        samples = np.asarray(img)
        return array_to_rgb(samples, name, int_range=_int_mode_range(mode, samples, name))
    if mode in ("RGBA", "RGBa", "RGBX"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)[..., :3].copy()
    if mode in ("LA", "La", "PA"):
        img = img.convert("L") if mode != "PA" else img.convert("RGB")
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError) as exc:
        raise ImageLoadError(name, f"cannot convert mode {mode} to RGB ({exc})") from None


def _int_mode_range(mode: str, samples: np.ndarray, name: str) -> int | None:
    """The full range a PIL integer mode's values are scaled from: 16-bit for ``I;16``; for
    32-bit ``I``, 16-bit when the values fit (16-bit PNGs often open as ``I``), else 32-bit.
    An ``I`` image holding 8-bit values (0 < max <= 255) would be black either way: refused."""
    if mode.startswith("I;16"):
        return 65535
    if mode != "I":
        return None
    lo, hi = int(samples.min(initial=0)), int(samples.max(initial=0))
    if lo >= 0 and 0 < hi <= 255:
        raise ImageLoadError(name, f"32-bit integer image (mode I) with values up to {hi}: read "
                                   f"as 16-bit data it is black; for 8-bit values convert it "
                                   f"first (img.convert('L'), or a uint8 array)")
    return 65535 if lo >= 0 and hi <= 65535 else 2**32 - 1


def array_to_rgb(arr: np.ndarray, name: str = "<array>", int_range: int | None = None) -> np.ndarray:
    """Convert a numpy image array to RGB ``uint8`` by the rules in this module's docstring."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., :3]
    else:
        raise ImageLoadError(
            name, f"array shape {a.shape} is not HxW, HxWx1, HxWx3 or HxWx4 (channels last)"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageLoadError(name, f"array has no pixels (shape {a.shape})")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == bool:
        return (a.astype(np.uint8) * 255)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageLoadError(name, "float image holds NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageLoadError(
                name, f"float image values must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]"
            )
        return np.rint(a * 255.0).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        if int_range is None:
            if a.dtype != np.uint16:  # int64 of 0..255 values read as 16-bit was black
                raise ImageLoadError(
                    name, f"{a.dtype} array: give uint8 (0-255), uint16 (0-65535) or float in "
                          f"[0, 1] (8-bit values: arr.astype(np.uint8))")
            int_range = 65535
        if int(a.min(initial=0)) < 0:
            raise ImageLoadError(name, "integer image holds negative values")
        scaled = (a.astype(np.uint64) * 255) // int_range
        return np.clip(scaled, 0, 255).astype(np.uint8)
    raise ImageLoadError(name, f"unsupported array dtype {a.dtype}")


#: the first bytes of a TIFF (classic and BigTIFF, both byte orders)
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def image_size(data: bytes, formats: list[str] | None = None) -> tuple[int, int] | None:
    """``(width, height)`` from the header of the encoded image ``data``, decoding no pixel.

    ``formats``: the Pillow formats allowed to parse the header (TIFFs are read by tifffile when
    it is installed). None when the header cannot be read: the full reader then gives its own
    error for the file.
    """
    with quiet_decoding():
        return _header_size(data, formats)


def _header_size(data: bytes, formats: list[str] | None) -> tuple[int, int] | None:
    if data[:4] in TIFF_MAGIC:
        try:
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tf:
                page = tf.pages[0]
                return int(page.imagewidth), int(page.imagelength)
        except Exception:  # not installed, or a TIFF tifffile cannot parse: try Pillow
            formats = None if formats is None else [*formats, "TIFF"]
    try:
        with Image.open(io.BytesIO(data), formats=formats) as img:  # warnings: quiet_decoding
            return img.size
    except Exception:  # not an image Pillow knows, or over Pillow's own bomb guard: the
        return None     # full reader names the problem without decoding


def decode_reduced(data: bytes, name: str, min_size: tuple[int, int],
                   formats: list[str] | None = None) -> np.ndarray | None:
    """Decode a large non-TIFF image already shrunk by an integer factor, or None.

    The factor is the largest that keeps the image at least ``min_size`` ``(width, height)``;
    below 2 (and for TIFFs, whose raster rules need every sample) this returns None and the
    caller reads the image as usual, so ordinary images give exactly the usual pixels. JPEGs
    are decoded at 1/2, 1/4 or 1/8 scale by the decoder itself (Pillow's ``draft``), so the
    full image never exists in memory; other formats are decoded, then box-averaged
    (``Image.reduce``) before the RGB conversion of this module's rules.
    """
    if data[:4] in TIFF_MAGIC:
        return None
    try:
        # quiet_decoding: the decoder's warnings (Pillow's bomb warning included) stay out
        with quiet_decoding(), Image.open(io.BytesIO(data), formats=formats) as img:
            w, h = img.size
            factor = min(w // max(1, min_size[0]), h // max(1, min_size[1]))
            if factor < 2:
                return None
            if img.format == "JPEG":
                img.draft(img.mode if img.mode in ("L", "RGB") else None,
                          (w // factor, h // factor))
            img.load()
            reduced = _reduce(img, max(1, min(img.size[0] * factor // w,
                                              img.size[1] * factor // h)), name)
            return pil_to_rgb(reduced, name)
    except ImageLoadError:
        raise
    except Exception:  # corrupt data, an unknown mode: the usual reader reports it
        return None


def _reduce(img: Image.Image, factor: int, name: str) -> Image.Image:
    """``img`` box-averaged by ``factor``, in a mode :func:`pil_to_rgb` reads as usual."""
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("LA", "La"):
        img = img.convert("L")
    elif img.mode not in ("L", "RGB", "I", "F"):
        img = Image.fromarray(pil_to_rgb(img, name))  # palette, alpha, 16-bit: RGB first
    return img.reduce(factor) if factor > 1 else img
