"""GeoTIFF and other odd rasters → the encoder's RGB ``uint8`` input, plus their georeferencing.

Why: remote sensing archives hold TIFFs that a photo loader reads badly or not at all:
4 to 13 bands, 16-bit or float samples, band-separate layouts, and map coordinates. This module
turns such a raster into RGB ``uint8 (H, W, 3)`` by one documented, configurable
:class:`RasterRule`, and reads its georeferencing (bounds, CRS, lon/lat) from the GeoTIFF tags
themselves (no GDAL).

**Readers.** With the ``geo`` extra (``pip install 'rsir-sdk[geo]'``: ``tifffile``, plus
``imagecodecs`` for LZW/JPEG/ZSTD-compressed multi-band files) TIFF samples are read by
tifffile; without it, or when tifffile cannot decode a file, by Pillow. Pillow reads 1-, 3- and
4-band 8-bit TIFFs, single-band 16-bit and float TIFFs, LZW/Deflate/JPEG/PackBits compression
and tiles; it **cannot** read more than 4 bands, float RGB, 16-bit 4-band files (other than
RGB + alpha) or band-separate (planar) 16-bit files, and it truncates 16-bit RGB to the high
byte. Palette, CMYK, YCbCr and
white-is-zero TIFFs are always decoded by Pillow (it applies their colour model).

**The rule** (:class:`RasterRule`), applied to the sample array ``(H, W, bands)``:

1. *Bands*: ``bands=(r, g, b)`` (1-based) picks three bands, ``bands=(k,)`` one band shown as
   grey. Default: band 1 as grey for 1- and 2-band rasters, bands 1, 2, 3 otherwise. Many
   4-band products store **B, G, R, NIR** (PlanetScope, Sentinel-2 stacks of B2, B3, B4, B8):
   give ``bands=(3, 2, 1)`` for true colour.
2. *Stretch* to 0..255, per selected band:

   - ``"range"`` (default, the same rule as :mod:`rsir_sdk.images`): 8-bit as stored; 16-bit
     integers ``value * 255 // 65535``; 32-bit integers that stay within 0..65535 as 16-bit, else
     over their full range; floats must lie in [0, 1] (``* 255``, rounded), other float ranges
     and negative integers are refused with a hint to choose another stretch;
   - ``"percentile"``: linear between the ``percentiles`` (default 2 and 98) of each band's
     valid pixels, clipped (what GIS viewers show by default; adapts to every image);
   - ``"fixed"``: linear between ``value_range = (low, high)`` for every band and every image
     (e.g. ``(0, 3000)`` for Sentinel-2 L2A reflectance × 10000): the same scene always gets the
     same pixels, whatever else is in the tile.

3. *No-data*: NaN pixels and pixels equal to ``nodata`` (default: the file's GDAL_NODATA tag)
   are left out of the percentiles and become 0.

Only the first page of a multi-page TIFF is read (the full-resolution image of a
cloud-optimised GeoTIFF). The rule applies to TIFF files only; JPEG, PNG and other formats follow
:mod:`rsir_sdk.images`. Every TIFF that :func:`rsir_sdk.images.load_image` reads (so every
``Encoder``/``Retriever`` call) goes through :func:`decode_tiff` with the *current* rule, which
is :data:`DEFAULT_RULE` unless :func:`set_default_rule` or :func:`using_rule` says otherwise:
index and query with the same rule, or their codes are not comparable (``rsir index`` records
the rule with the collection and ``rsir search`` reuses it).

**Georeferencing** (:func:`georeference`): ModelPixelScale (33550) + ModelTiepoint (33922) or
ModelTransformation (34264) give the bounds in the raster's CRS; the GeoKeyDirectory (34735)
gives the EPSG code (ProjectedCSType 3072, else GeographicType 2048) and pixel-is-point. WGS84
lon/lat bounds and centre are added for EPSG:4326, UTM (326xx/327xx) and Web Mercator (3857).

>>> import numpy as np
>>> rule = RasterRule(bands=(3, 2, 1), stretch="fixed", value_range=(0, 3000))
>>> rule.apply(np.full((2, 2, 4), 1500, np.uint16))[0, 0].tolist()
[128, 128, 128]
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageLoadError, RsirError

RasterSource = Union[str, os.PathLike, bytes, bytearray, IO[bytes]]

STRETCHES = ("range", "percentile", "fixed")
#: decoded rasters larger than this (pixels x bands x bytes per sample) are refused
DEFAULT_MAX_RASTER_BYTES = 4 << 30
#: at most this many pixels per band are sampled to estimate percentiles
PERCENTILE_SAMPLE = 1 << 20

TAG_PIXEL_SCALE = 33550
TAG_TIEPOINT = 33922
TAG_TRANSFORMATION = 34264
TAG_GEOKEYS = 34735
TAG_GDAL_NODATA = 42113
_GEO_TAGS = (TAG_PIXEL_SCALE, TAG_TIEPOINT, TAG_TRANSFORMATION, TAG_GEOKEYS, TAG_GDAL_NODATA)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Pillow modes whose array holds the raw samples (the rule applies to them)
_RAW_PIL_MODES = {"L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F", "RGB", "RGBA", "RGBX", "LA"}
# photometric interpretations whose samples tifffile returns as they should be shown
_RAW_PHOTOMETRIC = {"MINISBLACK", "RGB"}


class RasterRuleError(RsirError, ValueError):
    """A raster rule is malformed (unknown stretch, bad band list, bad percentiles)."""


@dataclass(frozen=True)
class RasterRule:
    """How a raster's samples become RGB ``uint8``: band choice, stretch, no-data.

    See the module docstring for the full rule. ``parse`` reads the command-line form.

    >>> RasterRule.parse("bands=4,3,2;stretch=percentile:1,99").to_dict()["percentiles"]
    [1.0, 99.0]
    """

    bands: tuple[int, ...] | None = None
    stretch: str = "range"
    percentiles: tuple[float, float] = (2.0, 98.0)
    value_range: tuple[float, float] | None = None
    nodata: float | None = None

    def __post_init__(self) -> None:
        if self.stretch not in STRETCHES:
            raise RasterRuleError(
                f"unknown stretch {self.stretch!r}; choose one of {', '.join(STRETCHES)}"
            )
        if self.bands is not None:
            bands = tuple(int(b) for b in self.bands)
            if len(bands) not in (1, 3) or min(bands) < 1:
                raise RasterRuleError(
                    f"bands must be 1 or 3 band numbers counted from 1 (e.g. 4,3,2), got {self.bands}"
                )
            object.__setattr__(self, "bands", bands)
        lo, hi = (float(x) for x in self.percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise RasterRuleError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        object.__setattr__(self, "percentiles", (lo, hi))
        if self.stretch == "fixed":
            if self.value_range is None:
                raise RasterRuleError("stretch 'fixed' needs value_range=(low, high), e.g. fixed:0,3000")
            vlo, vhi = (float(x) for x in self.value_range)
            if not vlo < vhi:
                raise RasterRuleError(f"value_range must have low < high, got {self.value_range}")
            object.__setattr__(self, "value_range", (vlo, vhi))
        elif self.value_range is not None:
            raise RasterRuleError("value_range is only used with stretch 'fixed'")

    # ------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (recorded with a collection)."""
        return {
            "bands": list(self.bands) if self.bands else None,
            "stretch": self.stretch,
            "percentiles": list(self.percentiles),
            "value_range": list(self.value_range) if self.value_range else None,
            "nodata": self.nodata,
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any] | None) -> "RasterRule":
        """The inverse of :meth:`to_dict` (``None`` → the default rule)."""
        if not obj:
            return cls()
        return cls(
            bands=tuple(obj["bands"]) if obj.get("bands") else None,
            stretch=str(obj.get("stretch", "range")),
            percentiles=tuple(obj.get("percentiles") or (2.0, 98.0)),
            value_range=tuple(obj["value_range"]) if obj.get("value_range") else None,
            nodata=obj.get("nodata"),
        )

    @classmethod
    def parse(cls, text: str | None) -> "RasterRule":
        """Read ``"bands=4,3,2;stretch=percentile:2,98;nodata=0"`` (every part optional).

        ``stretch`` is ``range``, ``percentile[:low,high]`` or ``fixed:low,high``.
        """
        if not text or not text.strip():
            return cls()
        kw: dict[str, Any] = {}
        for part in text.split(";"):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep:
                raise RasterRuleError(f"raster rule part {part!r} is not key=value")
            try:
                if key == "bands":
                    kw["bands"] = tuple(int(b) for b in value.split(","))
                elif key == "stretch":
                    kw.update(_parse_stretch(value))
                elif key == "nodata":
                    kw["nodata"] = float(value)
                else:
                    raise RasterRuleError(
                        f"unknown raster rule key {key!r} (use bands, stretch, nodata)"
                    )
            except ValueError as exc:
                if isinstance(exc, RasterRuleError):
                    raise
                raise RasterRuleError(f"bad value in raster rule part {part!r}: {exc}") from None
        return cls(**kw)

    def describe(self) -> str:
        """The rule in the :meth:`parse` form."""
        parts = []
        if self.bands:
            parts.append("bands=" + ",".join(str(b) for b in self.bands))
        if self.stretch == "percentile":
            parts.append(f"stretch=percentile:{_num(self.percentiles[0])},{_num(self.percentiles[1])}")
        elif self.stretch == "fixed":
            parts.append(f"stretch=fixed:{_num(self.value_range[0])},{_num(self.value_range[1])}")
        else:
            parts.append("stretch=range")
        if self.nodata is not None:
            parts.append(f"nodata={_num(self.nodata)}")
        return ";".join(parts)

    @property
    def is_default(self) -> bool:
        """True for the rule that reproduces :mod:`rsir_sdk.images` exactly."""
        return self == RasterRule()

    # ------------------------------------------------------------ the conversion
    def apply(self, samples: np.ndarray, nodata: float | None = None, name: str = "<raster>") -> np.ndarray:
        """Turn samples ``(H, W)`` or ``(H, W, bands)`` into RGB ``uint8 (H, W, 3)``.

        ``nodata`` is the file's no-data value, used when the rule sets none.
        """
        a = np.asarray(samples)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0:
            raise ImageLoadError(name, f"raster samples must be (H, W, bands), got shape {a.shape}")
        n = a.shape[2]
        picks = self.bands or ((1,) if n < 3 else (1, 2, 3))
        if max(picks) > n:
            raise ImageLoadError(
                name, f"the raster rule asks for band {max(picks)} but the raster has {n} band(s)"
            )
        sel = a[..., [b - 1 for b in picks]]
        nd = self.nodata if self.nodata is not None else nodata
        if sel.dtype == bool:
            sel = sel.astype(np.uint8) * 255
        if self.stretch == "range":
            out = _range_stretch(sel, nd, name)
        else:
            out = _linear_stretch(sel, nd, self, name)
        if out.shape[2] == 1:
            out = np.repeat(out, 3, axis=2)
        return np.ascontiguousarray(out)


DEFAULT_RULE = RasterRule()
_process_rule: RasterRule = DEFAULT_RULE
_context_rule: contextvars.ContextVar[RasterRule | None] = contextvars.ContextVar(
    "rsir_raster_rule", default=None
)


def get_default_rule() -> RasterRule:
    """The rule :func:`rsir_sdk.images.load_image` applies to TIFFs here and now: the one of
    an enclosing :func:`using_rule` block, else the process-wide :func:`set_default_rule`."""
    rule = _context_rule.get()
    return _process_rule if rule is None else rule


def set_default_rule(rule: RasterRule | str | None) -> None:
    """Set the process-wide rule (every thread) for TIFFs read by
    :func:`rsir_sdk.images.load_image`; ``None`` restores :data:`DEFAULT_RULE`.

    >>> set_default_rule("bands=3,2,1;stretch=percentile")    # doctest: +SKIP
    """
    global _process_rule
    _process_rule = _as_rule(rule)


@contextlib.contextmanager
def using_rule(rule: RasterRule | str | None) -> Iterator[RasterRule]:
    """Use ``rule`` for TIFFs read in this block (this thread / context only).

    >>> with using_rule("bands=3,2,1"):                       # doctest: +SKIP
    ...     retriever.search("scene.tif")
    """
    token = _context_rule.set(_as_rule(rule))
    try:
        yield get_default_rule()
    finally:
        _context_rule.reset(token)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Raster:
    """A decoded image: RGB ``uint8 (H, W, 3)`` and what is known about where it lies."""

    rgb: np.ndarray
    georef: dict[str, Any] = field(default_factory=dict)
    bands: int = 3
    dtype: str = "uint8"
    reader: str = "pillow"


def is_tiff(header: bytes) -> bool:
    """True when ``header`` (the first 4 bytes or more) starts a TIFF or BigTIFF file."""
    return bytes(header[:4]) in _TIFF_MAGIC


def tifffile_available() -> bool:
    """Whether the ``geo`` extra's tifffile can be imported."""
    import importlib.util

    return importlib.util.find_spec("tifffile") is not None


def read_raster(
    src: RasterSource,
    rule: RasterRule | str | None = None,
    *,
    max_pixels: int | None = None,
    max_bytes: int | None = DEFAULT_MAX_RASTER_BYTES,
) -> Raster:
    """Read any image file as a :class:`Raster`: TIFFs by the raster rule, others by Pillow.

    ``rule`` defaults to the current rule (:func:`get_default_rule`); ``max_pixels`` to
    :data:`rsir_sdk.images.DEFAULT_MAX_PIXELS`. Unreadable input raises
    :class:`~rsir_sdk.errors.ImageLoadError` naming the file and the reason.

    >>> r = read_raster("scene.tif", "bands=3,2,1;stretch=percentile")   # doctest: +SKIP
    >>> r.rgb.shape, r.georef["crs"], r.georef["lonlat"]                  # doctest: +SKIP
    ((512, 512, 3), 'EPSG:32633', [15.0, 45.15])
    """
    from . import images

    rule = get_default_rule() if rule is None else _as_rule(rule)
    if max_pixels is None:
        max_pixels = images.DEFAULT_MAX_PIXELS
    name = images.describe_source(src)
    with _open(src, name) as fh:
        start = fh.tell()
        head = fh.read(4)
        fh.seek(start)
        if not is_tiff(head):
            return Raster(images.load_image(fh, max_pixels=max_pixels))
        return _read_tiff(fh, name, rule, max_pixels, max_bytes)


def decode_tiff(fh: IO[bytes], name: str, max_pixels: int | None) -> np.ndarray:
    """The hook :mod:`rsir_sdk.images` calls for TIFF data: RGB ``uint8`` by the current rule."""
    return _read_tiff(fh, name, get_default_rule(), max_pixels, DEFAULT_MAX_RASTER_BYTES).rgb


@contextlib.contextmanager
def _open(src: RasterSource, name: str) -> Iterator[IO[bytes]]:
    if isinstance(src, (str, os.PathLike)):
        from .images import check_file

        with open(check_file(src, name), "rb") as fh:
            yield fh
    elif isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageLoadError(name, "no data (0 bytes)")
        yield io.BytesIO(bytes(src))
    elif hasattr(src, "read"):
        yield src if _seekable(src) else io.BytesIO(src.read())
    else:
        raise ImageLoadError(name, f"unsupported source type {type(src).__name__}")


def _seekable(fh: Any) -> bool:
    try:
        return bool(fh.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _read_tiff(
    fh: IO[bytes], name: str, rule: RasterRule, max_pixels: int | None, max_bytes: int | None
) -> Raster:
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
        tags = {code: page.tags[code].value for code in _GEO_TAGS if code in page.tags}
        samples = page.asarray()
        axes = page.axes
    samples = _to_yxs(samples, axes, name)
    nodata = _nodata(tags.get(TAG_GDAL_NODATA))
    rgb = rule.apply(samples, nodata, name)
    return Raster(rgb, georeference(tags, width, height), samples.shape[2], str(samples.dtype), "tifffile")


def _read_with_pillow(fh, name, rule, max_pixels, max_bytes, tiff_reason) -> Raster:
    from .images import pil_to_rgb

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
            tags = {code: img.tag_v2[code] for code in _GEO_TAGS if code in getattr(img, "tag_v2", {})}
            img.load()
            if img.mode in _RAW_PIL_MODES:
                samples = np.asarray(img)
                if img.mode.startswith("I;16"):
                    samples = samples.astype(np.uint16)
                elif img.mode == "I" and int(samples.max(initial=0)) <= 65535 and int(samples.min(initial=0)) >= 0:
                    samples = samples.astype(np.uint16)  # 16-bit data Pillow widened to 32-bit
                elif img.mode in ("RGBA", "RGBX", "LA") and rule.bands is None:
                    samples = samples[..., :-1]  # alpha dropped, as rsir_sdk.images does
                rgb = rule.apply(samples, _nodata(tags.get(TAG_GDAL_NODATA)), name)
            else:
                rgb = pil_to_rgb(img, name)
            dtype = str(np.asarray(img).dtype) if img.mode in _RAW_PIL_MODES else "uint8"
    except ImageLoadError as exc:
        if tiff_reason and "raster rule" not in exc.reason and "stretch" not in exc.reason:
            raise failed(exc.reason) from None
        raise
    except UnidentifiedImageError:
        raise failed("not a TIFF Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"too large: {exc}") from None
    except MemoryError:
        raise ImageLoadError(name, "not enough memory to decode this raster") from None
    except (OSError, ValueError, SyntaxError, KeyError, IndexError) as exc:
        raise failed(f"corrupt or unsupported TIFF ({exc})") from None
    return Raster(rgb, georeference(tags, width, height), bands, dtype, "pillow")


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


def _range_stretch(a: np.ndarray, nodata: float | None, name: str) -> np.ndarray:
    mask = _invalid(a, nodata)
    if a.dtype == np.uint8:
        out = a.copy()
    elif np.issubdtype(a.dtype, np.floating):
        valid = a[~mask] if mask is not None else a
        if valid.size:
            lo, hi = float(valid.min()), float(valid.max())
            if lo < 0.0 or hi > 1.0:
                raise ImageLoadError(
                    name, f"float raster values lie in [{lo:.4g}, {hi:.4g}], not [0, 1]: choose a "
                          f"stretch (--stretch percentile, or fixed:LOW,HIGH)"
                )
        out = np.rint(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0).clip(0, 1) * 255.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        valid = a[~mask] if mask is not None else a
        if valid.size and int(valid.min()) < 0:
            raise ImageLoadError(
                name, "integer raster holds negative values: choose a stretch (--stretch "
                      "percentile, or fixed:LOW,HIGH)"
            )
        if a.dtype.itemsize <= 2 or (valid.size == 0 or int(valid.max()) <= 65535):
            top = 65535
        else:
            top = 2**32 - 1
        out = np.clip((np.clip(a, 0, top).astype(np.uint64) * 255) // top, 0, 255).astype(np.uint8)
    else:
        raise ImageLoadError(name, f"unsupported raster sample type {a.dtype}")
    if mask is not None:
        out[mask] = 0
    return out


def _linear_stretch(a: np.ndarray, nodata: float | None, rule: RasterRule, name: str) -> np.ndarray:
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ImageLoadError(name, f"unsupported raster sample type {a.dtype}")
    x = a.astype(np.float64 if a.dtype.itemsize > 4 else np.float32)
    mask = _invalid(a, nodata)
    out = np.zeros(a.shape, dtype=np.uint8)
    for b in range(a.shape[2]):
        band = x[..., b]
        bmask = mask[..., b] if mask is not None else None
        if rule.stretch == "fixed":
            lo, hi = rule.value_range
        else:
            valid = band[~bmask] if bmask is not None else band.ravel()
            if valid.size == 0:
                continue  # nothing valid: the band stays 0
            if valid.size > PERCENTILE_SAMPLE:  # a deterministic, evenly strided sample
                valid = valid[:: valid.size // PERCENTILE_SAMPLE + 1]
            lo, hi = (float(v) for v in np.percentile(valid, rule.percentiles))
        if hi <= lo:
            continue  # a constant band carries no contrast: 0
        scaled = (band - lo) * (255.0 / (hi - lo))
        out[..., b] = np.rint(np.nan_to_num(scaled, nan=0.0).clip(0, 255)).astype(np.uint8)
        if bmask is not None:
            out[..., b][bmask] = 0
    return out


def _invalid(a: np.ndarray, nodata: float | None) -> np.ndarray | None:
    mask = None
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a)
        if bad.any():
            mask = bad
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        eq = a == nodata
        if eq.any():
            mask = eq if mask is None else (mask | eq)
    return mask


def _nodata(value: Any) -> float | None:
    if value is None:
        return None
    try:
        text = value.decode() if isinstance(value, bytes) else str(value)
        return float(text.strip().strip("\x00"))
    except ValueError:
        return None


# --------------------------------------------------------------------------- georeferencing


def parse_geokeys(directory: Any) -> dict[int, Any]:
    """GeoKeyDirectory (tag 34735) values → ``{key id: value}`` for the keys stored inline.

    >>> parse_geokeys((1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 32633))
    {1024: 1, 3072: 32633}
    """
    vals = [int(v) for v in directory]
    if len(vals) < 4:
        return {}
    n = vals[3]
    out: dict[int, Any] = {}
    for i in range(n):
        base = 4 + 4 * i
        if base + 3 >= len(vals):
            break
        key, location, _count, value = vals[base : base + 4]
        if location == 0:  # value stored in the directory itself (SHORT keys: codes, enums)
            out[key] = value
    return out


def georeference(tags: Mapping[int, Any], width: int, height: int) -> dict[str, Any]:
    """Bounds, CRS and lon/lat from GeoTIFF tag values; ``{}`` when the raster is not georeferenced.

    Returns ``crs`` (``"EPSG:<code>"``, when known), ``bounds`` ``[minx, miny, maxx, maxy]`` in
    the CRS, and for EPSG:4326, UTM and Web Mercator ``lonlat_bounds`` ``[west, south, east,
    north]`` and ``lonlat`` (the centre, ``[lon, lat]``).

    >>> g = georeference({33550: (10.0, 10.0, 0.0), 33922: (0, 0, 0, 500000.0, 5000000.0, 0),
    ...                   34735: (1, 1, 0, 1, 3072, 0, 1, 32633)}, 100, 100)
    >>> g["crs"], g["bounds"]
    ('EPSG:32633', [500000.0, 4999000.0, 501000.0, 5000000.0])
    """
    keys = parse_geokeys(tags[TAG_GEOKEYS]) if TAG_GEOKEYS in tags else {}
    epsg = None
    for key in (3072, 2048):  # ProjectedCSTypeGeoKey, GeographicTypeGeoKey
        code = keys.get(key)
        if code and code != 32767:  # 32767 = user-defined
            epsg = int(code)
            break
    pixel_is_point = keys.get(1025) == 2
    corners = _corners(tags, width, height, pixel_is_point)
    out: dict[str, Any] = {}
    if epsg is not None:
        out["crs"] = f"EPSG:{epsg}"
    if corners is None:
        return out
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    out["bounds"] = [_round(min(xs)), _round(min(ys)), _round(max(xs)), _round(max(ys))]
    if epsg is not None:
        lonlat = [to_lonlat(x, y, epsg) for x, y in corners]
        if all(p is not None for p in lonlat):
            lons, lats = [p[0] for p in lonlat], [p[1] for p in lonlat]
            out["lonlat_bounds"] = [round(min(lons), 7), round(min(lats), 7),
                                    round(max(lons), 7), round(max(lats), 7)]
            cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
            centre = to_lonlat(cx, cy, epsg)
            out["lonlat"] = [round(centre[0], 7), round(centre[1], 7)]
    return out


def _corners(tags, width, height, pixel_is_point) -> list[tuple[float, float]] | None:
    shift = -0.5 if pixel_is_point else 0.0  # pixel-is-point: tie points name pixel centres
    if TAG_TRANSFORMATION in tags:
        m = [float(v) for v in tags[TAG_TRANSFORMATION]]
        if len(m) < 8:
            return None

        def at(i: float, j: float) -> tuple[float, float]:
            i, j = i + shift, j + shift
            return m[0] * i + m[1] * j + m[3], m[4] * i + m[5] * j + m[7]

    elif TAG_TIEPOINT in tags and TAG_PIXEL_SCALE in tags:
        tp = [float(v) for v in tags[TAG_TIEPOINT]]
        sc = [float(v) for v in tags[TAG_PIXEL_SCALE]]
        if len(tp) < 6 or len(sc) < 2:
            return None
        ti, tj, tx, ty = tp[0], tp[1], tp[3], tp[4]
        sx, sy = sc[0], sc[1]

        def at(i: float, j: float) -> tuple[float, float]:
            return tx + (i - ti + shift) * sx, ty - (j - tj + shift) * sy

    else:
        return None
    return [at(0, 0), at(width, 0), at(0, height), at(width, height)]


def to_lonlat(x: float, y: float, epsg: int) -> tuple[float, float] | None:
    """WGS84 ``(lon, lat)`` of a point given in EPSG:4326, UTM (326xx/327xx) or 3857; else None.

    >>> lon, lat = to_lonlat(448250.599, 5411951.599, 32631)   # the Eiffel Tower
    >>> round(lon, 4), round(lat, 4)
    (2.2945, 48.8584)
    """
    if epsg == 4326:
        return float(x), float(y)
    if epsg == 3857:
        r = 6378137.0
        return math.degrees(x / r), math.degrees(2 * math.atan(math.exp(y / r)) - math.pi / 2)
    if 32601 <= epsg <= 32660 or 32701 <= epsg <= 32760:
        return _utm_inverse(x, y, epsg % 100, north=epsg < 32700)
    return None


def _utm_inverse(easting: float, northing: float, zone: int, north: bool) -> tuple[float, float]:
    """UTM (WGS84) → lon/lat by the series of Snyder, *Map Projections* (1987), p. 63 (mm-level)."""
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    x = easting - 500000.0
    y = northing if north else northing - 10_000_000.0
    mu = (y / k0) / (a * (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256))
    e1 = (1 - math.sqrt(1 - e2)) / (1 + math.sqrt(1 - e2))
    phi1 = (
        mu
        + (3 * e1 / 2 - 27 * e1**3 / 32) * math.sin(2 * mu)
        + (21 * e1**2 / 16 - 55 * e1**4 / 32) * math.sin(4 * mu)
        + (151 * e1**3 / 96) * math.sin(6 * mu)
        + (1097 * e1**4 / 512) * math.sin(8 * mu)
    )
    s, c, t = math.sin(phi1), math.cos(phi1), math.tan(phi1)
    n1 = a / math.sqrt(1 - e2 * s * s)
    t1, c1 = t * t, ep2 * c * c
    r1 = a * (1 - e2) / (1 - e2 * s * s) ** 1.5
    d = x / (n1 * k0)
    lat = phi1 - (n1 * t / r1) * (
        d**2 / 2
        - (5 + 3 * t1 + 10 * c1 - 4 * c1**2 - 9 * ep2) * d**4 / 24
        + (61 + 90 * t1 + 298 * c1 + 45 * t1**2 - 252 * ep2 - 3 * c1**2) * d**6 / 720
    )
    lon = (
        d
        - (1 + 2 * t1 + c1) * d**3 / 6
        + (5 - 2 * c1 + 28 * t1 - 3 * c1**2 + 8 * ep2 + 24 * t1**2) * d**5 / 120
    ) / c
    return (zone - 1) * 6 - 180 + 3 + math.degrees(lon), math.degrees(lat)


# --------------------------------------------------------------------------- helpers


def _as_rule(rule: RasterRule | str | Mapping[str, Any] | None) -> RasterRule:
    if rule is None:
        return DEFAULT_RULE
    if isinstance(rule, RasterRule):
        return rule
    if isinstance(rule, str):
        return RasterRule.parse(rule)
    return RasterRule.from_dict(rule)


def _parse_stretch(value: str) -> dict[str, Any]:
    kind, _, args = value.partition(":")
    kind = kind.strip()
    nums = tuple(float(v) for v in args.split(",")) if args.strip() else ()
    if kind == "range":
        if nums:
            raise RasterRuleError("stretch 'range' takes no values")
        return {"stretch": "range"}
    if kind == "percentile":
        if nums and len(nums) != 2:
            raise RasterRuleError("stretch 'percentile' takes two values: percentile:LOW,HIGH")
        return {"stretch": "percentile", **({"percentiles": nums} if nums else {})}
    if kind == "fixed":
        if len(nums) != 2:
            raise RasterRuleError("stretch 'fixed' takes two values: fixed:LOW,HIGH")
        return {"stretch": "fixed", "value_range": nums}
    raise RasterRuleError(f"unknown stretch {kind!r}; choose one of {', '.join(STRETCHES)}")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _round(v: float) -> float:
    return round(float(v), 6)
