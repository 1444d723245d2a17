"""One loader for every kind of image a user may hold, returning RGB ``uint8 (H, W, 3)``.

Accepted sources: a file path (``str``/``os.PathLike``), ``bytes``, a binary file object, a
``PIL.Image.Image``, a numpy array, or an ``http(s)://`` URL (fetched with httpx under a time
and a size limit). Conversion rules, applied in this order:

- palette (``P``), ``1``, ``L``, ``LA``, ``CMYK``, ``YCbCr`` … → RGB through Pillow's ``convert``;
- an alpha channel (``RGBA``/``LA``/``PA``) is dropped, not composited: the colour values are
  kept as stored (remote sensing alpha is usually a no-data mask, not transparency);
- 16-bit and 32-bit integer images (``I;16``, ``I``) are scaled linearly from their full type
  range to 0..255 (``value * 255 // 65535`` for 16-bit);
- float arrays must hold values in [0, 1] and are scaled by 255 and rounded; other float ranges
  are refused rather than guessed;
- numpy arrays: ``HxW`` (grayscale, replicated to 3 channels), ``HxWx1``, ``HxWx3`` (RGB),
  ``HxWx4`` (RGBA, alpha dropped), dtype ``uint8``, ``uint16`` (scaled as above) or float.

TIFF files (file, bytes and file-object sources) are the one extension: their data is handed to
:func:`rsir_sdk.rasters.decode_tiff`, which reads multi-band, 16-bit and float rasters by the
current raster rule (band choice, stretch; see :mod:`rsir_sdk.rasters`). Its default rule gives
the same pixels as the rules above (with the ``geo`` extra, 16-bit RGB TIFFs, which Pillow alone
truncates to their high byte, follow the 16-bit rule: at most one grey level apart).

Anything that cannot be read raises :class:`~rsir_sdk.errors.ImageLoadError` naming the source.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageLoadError

ImageSource = Union[str, os.PathLike, bytes, bytearray, IO[bytes], Image.Image, np.ndarray]

#: largest URL download accepted by default (bytes)
DEFAULT_MAX_URL_BYTES = 50 * 1024 * 1024
#: default timeout for URL downloads (seconds)
DEFAULT_URL_TIMEOUT = 20.0
#: images with more pixels than this are refused before decoding (a decompression-bomb guard);
#: Pillow's own guard (``PIL.Image.MAX_IMAGE_PIXELS``) still applies on top
DEFAULT_MAX_PIXELS: int | None = 100_000_000


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


def load_image(
    src: ImageSource,
    *,
    url_timeout: float = DEFAULT_URL_TIMEOUT,
    max_url_bytes: int = DEFAULT_MAX_URL_BYTES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Load ``src`` as an RGB ``uint8`` array of shape ``(H, W, 3)``.

    >>> load_image(np.zeros((4, 5), dtype=np.uint8)).shape
    (4, 5, 3)
    """
    name = describe_source(src)
    if isinstance(src, np.ndarray):
        return array_to_rgb(src, name)
    if isinstance(src, Image.Image):
        return pil_to_rgb(src, name)
    if isinstance(src, str) and src.lower().startswith(("http://", "https://")):
        data = fetch_url(src, timeout=url_timeout, max_bytes=max_url_bytes)
        return _decode(io.BytesIO(data), src, max_pixels)
    if isinstance(src, str) and "://" in src:
        raise ImageLoadError(src, "only http:// and https:// URLs are supported")
    if isinstance(src, (str, os.PathLike)):
        with open(check_file(src, name), "rb") as fh:
            return _decode(fh, name, max_pixels)
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageLoadError(name, "no data (0 bytes)")
        return _decode(io.BytesIO(bytes(src)), name, max_pixels)
    if hasattr(src, "read"):
        return _decode(src, name, max_pixels)
    raise ImageLoadError(name, f"unsupported source type {type(src).__name__}")


def check_file(src: str | os.PathLike, name: str | None = None) -> Path:
    """Return ``src`` as a Path, or raise :class:`ImageLoadError` unless it is a non-empty file."""
    path = Path(src)
    name = name or str(src)
    if not path.is_file():
        raise ImageLoadError(name, "no such file" if not path.exists() else "not a file")
    if path.stat().st_size == 0:
        raise ImageLoadError(name, "the file is empty (0 bytes)")
    return path


def fetch_url(url: str, *, timeout: float, max_bytes: int) -> bytes:
    """Download ``url`` with httpx, refusing non-2xx answers and bodies over ``max_bytes``."""
    import httpx  # imported here: only URL sources need it

    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as resp:
            if resp.status_code >= 400:
                raise ImageLoadError(url, f"HTTP {resp.status_code} {resp.reason_phrase}")
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ImageLoadError(
                    url, f"response is {int(declared)} bytes, over the {max_bytes}-byte limit"
                )
            chunks, total = [], 0
            for chunk in resp.iter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise ImageLoadError(url, f"response exceeds the {max_bytes}-byte limit")
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise ImageLoadError(url, f"download failed: {exc.__class__.__name__}: {exc}") from exc
    data = b"".join(chunks)
    if not data:
        raise ImageLoadError(url, "the response body is empty")
    return data


def _decode(fh: IO[bytes], name: str, max_pixels: int | None) -> np.ndarray:
    # extension point: TIFF data goes to rsir_sdk.rasters (multi-band/16-bit/float rasters)
    fh = fh if _seekable(fh) else io.BytesIO(fh.read())
    start = fh.tell()
    head = fh.read(4)
    fh.seek(start)
    if head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        from .rasters import decode_tiff

        return decode_tiff(fh, name, max_pixels)
    try:
        with Image.open(fh) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageLoadError(
                    name, f"{img.width}x{img.height} pixels is over the {max_pixels}-pixel limit"
                )
            img.load()
            return pil_to_rgb(img, name)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image Pillow can identify") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"too large: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(name, f"corrupt or truncated image data ({exc})") from None


def _seekable(fh: Any) -> bool:
    try:
        return bool(fh.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def pil_to_rgb(img: Image.Image, name: str = "<PIL image>") -> np.ndarray:
    """Convert a PIL image to RGB ``uint8`` by the rules in this module's docstring."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return array_to_rgb(np.asarray(img), name, int_range=_int_mode_range(mode))
    if mode in ("RGBA", "RGBa", "RGBX"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)[..., :3].copy()
    if mode in ("LA", "La", "PA"):
        img = img.convert("L") if mode != "PA" else img.convert("RGB")
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError) as exc:
        raise ImageLoadError(name, f"cannot convert mode {mode} to RGB ({exc})") from None


def _int_mode_range(mode: str) -> int | None:
    if mode.startswith("I;16"):
        return 65535
    if mode == "I":
        return None  # 32-bit: decide from the values (16-bit PNGs often open as "I")
    return None


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
            if a.dtype == np.uint16 or a.dtype == np.int16:
                int_range = 65535
            elif int(a.max(initial=0)) <= 65535 and int(a.min(initial=0)) >= 0:
                int_range = 65535  # 16-bit data opened as 32-bit "I"
            else:
                int_range = 2**32 - 1
        if int(a.min(initial=0)) < 0:
            raise ImageLoadError(name, "integer image holds negative values")
        scaled = (a.astype(np.uint64) * 255) // int_range
        return np.clip(scaled, 0, 255).astype(np.uint8)
    raise ImageLoadError(name, f"unsupported array dtype {a.dtype}")
