"""Hit images for pages: files served from the archive root only, never from outside it.

``GET /v1/image?path=P`` answers the image at ``P`` when, once every symbolic link and ``..`` is
resolved, it lies inside the archive root and has an image extension. Anything else (a path
escaping the root, a missing file, a non-image, no archive root configured) is the same plain
404, so the endpoint says nothing about the file system outside the root. ``P`` is a hit's
``path`` as stored: absolute (inside the root) or relative to the root.

TIFF files (which browsers do not show) are rendered as PNG thumbnails through the SDK's own
reader (:func:`rsir_sdk.images.load_image`, multi-band and 16-bit rasters included).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .errors import NotFoundError

MEDIA_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
    ".bmp": "image/bmp", ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff",
}
#: longest side of a rendered TIFF thumbnail
THUMB_SIDE = 256


def not_found() -> NotFoundError:
    """The one 404 of this endpoint (same text whatever the reason)."""
    return NotFoundError("no such image in the archive", 404, "NotFoundError")


def resolve_in_root(root: Path | None, path: str) -> Path:
    """The real file ``path`` names inside ``root``; :class:`NotFoundError` for anything else.

    >>> resolve_in_root(Path("/srv/archive"), "../etc/passwd")  # doctest: +SKIP
    Traceback (most recent call last):
    NotFoundError: no such image in the archive
    """
    if root is None or not path or "\x00" in path or len(path) > 4096:
        raise not_found()
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise not_found() from None
    try:
        real.relative_to(root)
    except ValueError:
        raise not_found() from None
    if real.suffix.lower() not in MEDIA_TYPES or not real.is_file():
        raise not_found()
    if not os.access(real, os.R_OK):
        raise not_found()
    return real


def tiff_thumbnail(path: Path, side: int = THUMB_SIDE) -> bytes:
    """A PNG of a TIFF/GeoTIFF, longest side ``side``, read the way the SDK reads rasters."""
    from PIL import Image

    from ..images import load_image

    rgb = load_image(path)
    img = Image.fromarray(np.ascontiguousarray(rgb))
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def media_type(path: Path) -> str:
    """The content type of an image file by its extension."""
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
