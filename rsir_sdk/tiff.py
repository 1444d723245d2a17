"""TIFF and GeoTIFF files → RGB ``uint8`` by an explicit :class:`~rsir_sdk.rasters.RasterRule`.

**Readers.** With the ``geo`` extra (``pip install 'rsir-sdk[geo]'``: ``tifffile``, plus
``imagecodecs`` for LZW/JPEG/ZSTD-compressed multi-band files) TIFF samples are read by
tifffile; without it, or when tifffile cannot decode a file, by Pillow. Pillow reads 1-, 3- and
4-band 8-bit TIFFs, single-band 16-bit and float TIFFs, LZW/Deflate/JPEG/PackBits compression
and tiles; it **cannot** read more than 4 bands, float RGB, 16-bit 4-band files (other than
RGB + alpha) or band-separate (planar) 16-bit files, and it truncates 16-bit RGB to the high
byte. Palette, CMYK, YCbCr and white-is-zero TIFFs are always decoded by Pillow (it applies
their colour model). Only the first page of a multi-page TIFF is read (the full-resolution
image of a cloud-optimised GeoTIFF).

Callers normally go through :func:`rsir_sdk.images.read_image`, which sends TIFF data here.
"""

from __future__ import annotations

import importlib.util
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .decoding import bomb_reason
from .errors import ImageLoadError
from .georef import GEO_TAGS, TAG_DATETIME_ORIGINAL, TAG_GDAL_NODATA, georeference
from .pixels import Raster, pil_to_rgb
from .rasters import RasterRule

#: decoded rasters larger than this (pixels x bands x bytes per sample) are refused
DEFAULT_MAX_RASTER_BYTES = 4 << 30

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Pillow modes whose array holds the raw samples (the rule applies to them)
_RAW_PIL_MODES = {"L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F", "RGB", "RGBA", "RGBX", "LA"}
# photometric interpretations whose samples tifffile returns as they should be shown
_RAW_PHOTOMETRIC = {"MINISBLACK", "RGB"}


def is_tiff(header: bytes) -> bool:
    """True when ``header`` (the first 4 bytes or more) starts a TIFF or BigTIFF file."""
    return bytes(header[:4]) in _TIFF_MAGIC


def tifffile_available() -> bool:
    """Whether the ``geo`` extra's tifffile can be imported."""
    return importlib.util.find_spec("tifffile") is not None



def read_tiff(
    fh: IO[bytes],
    name: str,
    rule: RasterRule,
    max_pixels: int | None,
    max_bytes: int | None = DEFAULT_MAX_RASTER_BYTES,
) -> Raster:
    """Decode the TIFF in the seekable file ``fh`` by ``rule``; :class:`ImageLoadError` if not."""
    start = fh.tell()
    tiff_reason = None
    if tifffile_available():
        try:
            out = _read_with_tifffile(fh, name, rule, max_pixels, max_bytes)
            if out is not None:
                return out
        except ImageLoadError:
            raise
        except MemoryError:
            raise ImageLoadError(name, "not enough memory to decode this raster") from None
        except Exception as exc:  # tifffile raises many kinds: codecs, struct, value errors
            tiff_reason = f"tifffile: {type(exc).__name__}: {exc}"
        fh.seek(start)
    return _read_with_pillow(fh, name, rule, max_pixels, max_bytes, tiff_reason)


def _read_with_tifffile(fh, name, rule, max_pixels, max_bytes) -> Raster | None:
    """Samples by tifffile, or None for colour models Pillow decodes better (palette, YCbCr...)."""
    import tifffile

    with tifffile.TiffFile(fh) as tf:
        if not tf.pages:
            raise ImageLoadError(name, "TIFF holds no image")
        page = tf.pages[0]
        photometric = getattr(page.photometric, "name", str(page.photometric))
        compression = getattr(page.compression, "name", str(page.compression))
        if photometric not in _RAW_PHOTOMETRIC or compression in ("JPEG", "OJPEG"):
            return None
        width, height = int(page.imagewidth), int(page.imagelength)
        bands = int(page.samplesperpixel)
        _check_size(name, width, height, bands, np.dtype(page.dtype).itemsize, max_pixels, max_bytes)
        tags = {code: page.tags[code].value for code in GEO_TAGS if code in page.tags}
        exif = page.tags[34665].value if 34665 in page.tags else None  # the EXIF IFD, read as a dict
        if isinstance(exif, dict) and exif.get("DateTimeOriginal"):
            tags[TAG_DATETIME_ORIGINAL] = exif["DateTimeOriginal"]
        samples = page.asarray()
        axes = page.axes
    samples = _to_yxs(samples, axes, name)
    nodata = _nodata(tags.get(TAG_GDAL_NODATA))
    rgb = rule.apply(samples, nodata, name)
    return Raster(rgb, georeference(tags, width, height), samples.shape[2], str(samples.dtype), "tifffile")


def pil_rule_rgb(img: Image.Image, rule: RasterRule, nodata: float | None, name: str) -> np.ndarray:
    """A decoded PIL image's pixels by ``rule``: modes whose values are samples (gray, RGB,
    16-bit, 32-bit, float) through :meth:`RasterRule.apply` as a TIFF's samples, alpha dropped
    unless the rule names bands; palette and other modes through :func:`pil_to_rgb`."""
    if img.mode not in _RAW_PIL_MODES:
        return pil_to_rgb(img, name)
    samples = np.asarray(img)
    if img.mode.startswith("I;16"):
        samples = samples.astype(np.uint16)
    elif img.mode == "I" and int(samples.max(initial=0)) <= 65535 and int(samples.min(initial=0)) >= 0:
        samples = samples.astype(np.uint16)  # 16-bit data Pillow widened to 32-bit
    elif img.mode in ("RGBA", "RGBX", "LA") and rule.bands is None:
        samples = samples[..., :-1]  # alpha dropped, as rsir_sdk.images does
    return rule.apply(samples, nodata, name)


def _read_with_pillow(fh, name, rule, max_pixels, max_bytes, tiff_reason) -> Raster:
    def failed(reason: str) -> ImageLoadError:
        if tiff_reason:
            reason = f"{reason}; {tiff_reason}"
        elif not tifffile_available():
            reason += (
                "; Pillow reads up to 4 bands and not float RGB: install the geo extra "
                "(pip install 'rsir-sdk[geo]', tifffile) for multi-band, 16-bit and float rasters"
            )
        return ImageLoadError(name, reason)

    try:
        with Image.open(fh) as img:
            width, height = img.size
            bands = len(img.getbands())
            _check_size(name, width, height, bands, 4 if img.mode in ("I", "F") else 1,
                        max_pixels, max_bytes)
            tags = {code: img.tag_v2[code] for code in GEO_TAGS if code in getattr(img, "tag_v2", {})}
            original = _pillow_exif_time(img)
            if original:
                tags[TAG_DATETIME_ORIGINAL] = original
            img.load()
            rgb = pil_rule_rgb(img, rule, _nodata(tags.get(TAG_GDAL_NODATA)), name)
            dtype = str(np.asarray(img).dtype) if img.mode in _RAW_PIL_MODES else "uint8"
    except ImageLoadError as exc:
        if tiff_reason and "raster rule" not in exc.reason and "stretch" not in exc.reason:
            raise failed(exc.reason) from None
        raise
    except UnidentifiedImageError:
        raise failed("not a TIFF Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, bomb_reason(exc, max_pixels)) from None
    except MemoryError:
        raise ImageLoadError(name, "not enough memory to decode this raster") from None
    except (OSError, ValueError, SyntaxError, KeyError, IndexError) as exc:
        raise failed(f"corrupt or unsupported TIFF ({exc})") from None
    return Raster(rgb, georeference(tags, width, height), bands, dtype, "pillow")


def _pillow_exif_time(img: Image.Image) -> Any:
    """EXIF DateTimeOriginal of a Pillow TIFF, or None (an unreadable EXIF IFD is ignored)."""
    try:
        return img.getexif().get_ifd(0x8769).get(TAG_DATETIME_ORIGINAL)
    except Exception:  # noqa: BLE001 - a broken EXIF IFD must not make the image unreadable
        return None


def _check_size(name, width, height, bands, itemsize, max_pixels, max_bytes) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(name, f"raster has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(name, f"{width}x{height} pixels is over the {max_pixels}-pixel limit")
    nbytes = width * height * bands * itemsize
    if max_bytes is not None and nbytes > max_bytes:
        raise ImageLoadError(
            name, f"{width}x{height}x{bands} raster needs {nbytes / 2**30:.1f} GiB decoded, over "
                  f"the {max_bytes / 2**30:.1f} GiB limit: tile it first"
        )


def _to_yxs(samples: np.ndarray, axes: str, name: str) -> np.ndarray:
    """Reorder a tifffile page array to (Y, X, samples)."""
    a = np.asarray(samples)
    axes = str(axes)
    # drop leading length-1 axes other than Y/X/S (e.g. a 1-plane 'Z' or 'I')
    while a.ndim > len([c for c in axes if c in "YXS"]) and a.shape[0] == 1 and axes[0] not in "YXS":
        a, axes = a[0], axes[1:]
    if set(axes) - set("YXS"):
        raise ImageLoadError(name, f"unsupported TIFF page layout {axes} {a.shape}")
    if "S" not in axes:
        a, axes = a[..., None], axes + "S"
    return np.transpose(a, [axes.index(c) for c in "YXS"])




def _nodata(value: Any) -> float | None:
    if value is None:
        return None
    try:
        text = value.decode() if isinstance(value, bytes) else str(value)
        return float(text.strip().strip("\x00"))
    except ValueError:
        return None

