"""One reader for every kind of image a user may hold, returning RGB ``uint8 (H, W, 3)``.

Accepted sources: a file path (``str``/``os.PathLike``), ``bytes``, a binary file object, a
``PIL.Image.Image``, a numpy array, or an ``http(s)://`` URL (fetched with httpx under a size
limit and a limit on the *whole* download time, not only on each read; hosts at private,
loopback or link-local addresses only when ``allow_private_urls=True``: see :mod:`rsir_sdk.urlfetch`).

Formats: the ones listed in :data:`DECODE_FORMATS` (JPEG, PNG, TIFF, BMP, WebP, GIF,
JPEG 2000), whatever the file is called; anything else (EPS, PDF, PSD, ...) is refused before a
decoder plugin sees it, so a file named ``.jpg`` holding PostScript never reaches Ghostscript.

Conversion rules for decoded pixels are in :mod:`rsir_sdk.pixels`. TIFF data is the one
extension: it is read by :mod:`rsir_sdk.tiff` under an explicit :class:`~rsir_sdk.rasters.RasterRule`
(band choice, stretch; :data:`~rsir_sdk.rasters.DEFAULT_RULE` when none is given), which for
ordinary 8-bit and 16-bit TIFFs gives the same pixels as the rules for other formats.

Anything that cannot be read raises :class:`~rsir_sdk.errors.ImageLoadError` naming the source.
"""

from __future__ import annotations

import io
import os
from typing import IO, Any, Mapping, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .decoding import bomb_reason, quiet_decoding
from .errors import ImageLoadError
from .georef import TAG_DATETIME, TAG_DATETIME_ORIGINAL, photo_georef
from .pixels import Raster, array_to_rgb, check_file, describe_source, pil_to_rgb
from .rasters import RasterRule, as_rule
from .redact import redact_uri
from .tiff import DEFAULT_MAX_RASTER_BYTES, is_tiff, pil_rule_rgb, read_tiff
from .urlfetch import fetch_url, is_private_address

ImageSource = Union[str, os.PathLike, bytes, bytearray, IO[bytes], Image.Image, np.ndarray, Raster]
RuleLike = Union[RasterRule, str, Mapping[str, Any], None]

#: largest URL download accepted by default (bytes)
DEFAULT_MAX_URL_BYTES = 50 * 1024 * 1024
#: default limit on a whole URL download (seconds): connect, headers and every byte of the body
DEFAULT_URL_TIMEOUT = 20.0
#: images with more pixels than this are refused before decoding (a decompression-bomb guard);
#: Pillow's own guard (``PIL.Image.MAX_IMAGE_PIXELS``) still applies on top
DEFAULT_MAX_PIXELS: int | None = 100_000_000
#: the Pillow formats the SDK decodes (non-TIFF); every other Pillow plugin is refused
DECODE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "JPEG2000")

__all__ = [
    "DECODE_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_URL_BYTES",
    "DEFAULT_URL_TIMEOUT",
    "ImageSource",
    "Raster",
    "check_file",
    "describe_source",
    "fetch_url",
    "is_private_address",
    "load_image",
    "read_image",
]


def read_image(
    src: ImageSource,
    *,
    rule: RuleLike = None,
    url_timeout: float = DEFAULT_URL_TIMEOUT,
    max_url_bytes: int = DEFAULT_MAX_URL_BYTES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_raster_bytes: int | None = DEFAULT_MAX_RASTER_BYTES,
    allow_private_urls: bool = False,
) -> Raster:
    """Read ``src`` as a :class:`~rsir_sdk.pixels.Raster`: RGB pixels plus georeferencing.

    ``rule`` converts TIFF samples (default :data:`~rsir_sdk.rasters.DEFAULT_RULE`), and, when
    it is not the default, decoded pixels that only a raster holds (:func:`_decoded`); a
    :class:`~rsir_sdk.pixels.Raster` is returned as it is (already read). A URL is
    downloaded by :func:`rsir_sdk.urlfetch.fetch_url`: connect, headers and body all within
    ``url_timeout`` seconds, and hosts at private, loopback or link-local addresses only with
    ``allow_private_urls=True``.

    >>> read_image(np.zeros((4, 5), dtype=np.uint8)).rgb.shape
    (4, 5, 3)
    """
    if isinstance(src, Raster):  # read already (rsir serve's reduced large uploads)
        return src
    name = describe_source(src)
    if isinstance(src, (np.ndarray, Image.Image)):
        return _decoded(src, as_rule(rule), name)
    if isinstance(src, str) and src.lower().startswith(("http://", "https://")):
        data = fetch_url(src, timeout=url_timeout, max_bytes=max_url_bytes,
                         allow_private_urls=allow_private_urls)
        return _decode(io.BytesIO(data), redact_uri(src), rule, max_pixels, max_raster_bytes)
    if isinstance(src, str) and "://" in src:
        raise ImageLoadError(redact_uri(src), "only http:// and https:// URLs are supported")
    if isinstance(src, (str, os.PathLike)):
        try:
            with open(check_file(src, name), "rb") as fh:
                return _decode(fh, name, rule, max_pixels, max_raster_bytes)
        except OSError as exc:  # permission denied, a file vanishing, I/O errors
            raise ImageLoadError(name, f"cannot read the file ({exc.strerror or exc})") from None
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageLoadError(name, "no data (0 bytes)")
        return _decode(io.BytesIO(bytes(src)), name, rule, max_pixels, max_raster_bytes)
    if isinstance(src, io.TextIOBase):
        raise ImageLoadError(name, "a file opened in text mode: open it with open(path, 'rb')")
    if hasattr(src, "read"):
        return _decode(src, name, rule, max_pixels, max_raster_bytes)
    raise ImageLoadError(name, f"unsupported source type {type(src).__name__}")


def exif_georef(img: Image.Image) -> dict[str, Any]:
    """A photo's EXIF GPS position and time (:func:`rsir_sdk.georef.photo_georef`), read from
    an opened image (its header: no pixel is decoded); ``{}`` without EXIF, and when the EXIF
    cannot be parsed (the pixels are still good)."""
    try:
        exif = img.getexif()
        if not exif:
            return {}
        tags = {TAG_DATETIME: exif.get(TAG_DATETIME),
                TAG_DATETIME_ORIGINAL: exif.get_ifd(0x8769).get(TAG_DATETIME_ORIGINAL)}
        gps = dict(exif.get_ifd(0x8825))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the image unreadable
        return {}
    return photo_georef({k: v for k, v in tags.items() if v is not None}, gps)


def _binary(data: Any, name: str) -> bytes:
    """``data`` read from a file object, refused when it is text (a file opened with ``"r"``)."""
    if not isinstance(data, (bytes, bytearray)):
        raise ImageLoadError(name, "the file object gives text, not bytes: open it with "
                                   "open(path, 'rb')")
    return bytes(data)


#: PIL modes whose values are raster samples (a TIFF's), read by a non-default rule
_SAMPLE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _decoded(src: np.ndarray | Image.Image, rule: RasterRule, name: str) -> Raster:
    """Pixels already decoded. Under the default rule, by :mod:`rsir_sdk.pixels`' rules. Under
    another (a collection of multispectral rasters), what only a raster holds (an array that is
    not 8-bit, or of more than 4 bands, or of 4 when the rule names bands; a 16-bit, 32-bit or
    float PIL image) is read as raster samples, channels last, as a TIFF's are: the same scene
    as ``tifffile.imread(path)`` or as the path gets the same code (the rule was ignored for
    arrays: bands 1-3 of a B,G,R,NIR scene, unstretched). 8-bit RGB or gray pixels (a decoded
    JPEG or PNG, ``np.asarray(Image.open(jpg))``) stay as a JPEG file is read: by no rule."""
    if rule.is_default or not _raster_samples(src, rule):
        return Raster(array_to_rgb(src, name) if isinstance(src, np.ndarray) else pil_to_rgb(src, name))
    if isinstance(src, Image.Image):
        return Raster(pil_rule_rgb(src, rule, None, name))
    samples = np.asarray(src)
    if samples.ndim == 3 and samples.shape[0] <= 16 < samples.shape[2]:
        raise ImageLoadError(name, f"array shape {samples.shape} looks channels-first: give "
                                   f"(H, W, bands), e.g. np.moveaxis(arr, 0, -1)")
    bands = samples.shape[2] if samples.ndim == 3 else 1
    return Raster(rule.apply(samples, None, name), bands=bands, dtype=str(samples.dtype),
                  reader="array")


def _raster_samples(src: np.ndarray | Image.Image, rule: RasterRule) -> bool:
    """Whether decoded pixels can only be a raster's samples (see :func:`_decoded`)."""
    if isinstance(src, Image.Image):
        return src.mode in _SAMPLE_MODES
    bands = src.shape[2] if src.ndim == 3 else 1
    return (src.dtype not in (np.uint8, np.bool_) or bands > 4
            or (bands == 4 and rule.bands is not None))


def load_image(src: ImageSource, *, rule: RuleLike = None, **limits: Any) -> np.ndarray:
    """Load ``src`` as an RGB ``uint8`` array of shape ``(H, W, 3)`` (see :func:`read_image`).

    >>> load_image(np.zeros((4, 5), dtype=np.uint8)).shape
    (4, 5, 3)
    """
    return read_image(src, rule=rule, **limits).rgb


def _decode(
    fh: IO[bytes], name: str, rule: RuleLike, max_pixels: int | None, max_raster_bytes: int | None
) -> Raster:
    with quiet_decoding():  # the decoders' own warnings and logs: rsir says it in one line
        return _decode_quietly(fh, name, rule, max_pixels, max_raster_bytes)


def _decode_quietly(
    fh: IO[bytes], name: str, rule: RuleLike, max_pixels: int | None, max_raster_bytes: int | None
) -> Raster:
    if not _seekable(fh):
        fh = io.BytesIO(_binary(fh.read(), name))
    start = fh.tell()
    head = _binary(fh.read(4), name)
    fh.seek(start)
    if is_tiff(head):
        return read_tiff(fh, name, as_rule(rule), max_pixels, max_raster_bytes)
    try:
        with Image.open(fh, formats=_available_formats()) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageLoadError(
                    name, f"{img.width}x{img.height} pixels is over the {max_pixels}-pixel limit"
                )
            img.load()
            return Raster(pil_to_rgb(img, name), exif_georef(img))
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(
            name, f"not an image in a supported format ({', '.join(DECODE_FORMATS)}, TIFF)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, bomb_reason(exc, max_pixels)) from None
    except MemoryError:
        raise ImageLoadError(name, "not enough memory to decode the image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(name, f"corrupt or truncated image data ({exc})") from None


def _available_formats() -> list[str]:
    """:data:`DECODE_FORMATS` that this Pillow build has a plugin for."""
    Image.init()
    return [f for f in DECODE_FORMATS if f in Image.OPEN]


def _seekable(fh: Any) -> bool:
    try:
        return bool(fh.seekable())
    except (AttributeError, OSError, ValueError):
        return False
