"""While rsir decodes an image, the decoders' own warnings and log records stay out of the output.

Why: a damaged TIFF makes tifffile log ``ERROR tifffile: ...`` lines and Pillow warn
``Truncated File Read`` or ``DecompressionBombWarning`` (with a source path and line) before
rsir's own one line (``cannot load image ...``) or failure-report row says the same thing. The
user should see one line per bad image, in rsir's words. So every decode runs inside
:func:`quiet_decoding`, which drops, in this thread only, the records of the ``tifffile`` logger
and the warnings raised from Pillow's and tifffile's modules. Warnings raised anywhere else, and
the same libraries' output outside a decode (another thread, the user's own code), pass as
before: a dropped warning is also taken out of its module's once-per-location registry, so the
same warning raised later by the user's own call is still shown. The hook is put back at each
decode when something replaced it since (``warnings.catch_warnings`` restores what it saved, and
``logging.captureWarnings`` installs its own). Warnings the user turned into errors
(``-W error``) still raise, and the decode reports them as a bad image.

Pillow also refuses any image over twice ``PIL.Image.MAX_IMAGE_PIXELS`` (its decompression-bomb
guard, 178,956,970 pixels by default), whatever rsir's own ``max_pixels`` says. A library leaves
that global alone; :func:`allow_pixels` lifts it for programs whose user asked for a larger limit
(``rsir index --max-pixels``, ``rsir serve --max-pixels``), and :func:`bomb_reason` says so when
an image hits it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from typing import Any, Iterator

from PIL import Image

__all__ = ["allow_pixels", "bomb_reason", "pillow_pixel_limit", "quiet_decoding"]

_state = threading.local()
#: the folders of the modules whose warnings a decode silences (Pillow and tifffile)
_DECODER_DIRS = (f"{os.sep}PIL{os.sep}", f"{os.sep}tifffile{os.sep}")


def _decoding() -> bool:
    return getattr(_state, "depth", 0) > 0


@contextlib.contextmanager
def quiet_decoding() -> Iterator[None]:
    """Drop the decoders' warnings and ``tifffile`` log records in this thread meanwhile."""
    _install()
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


class _DropWhileDecoding(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _decoding()


_show_next = warnings.showwarning


def _showwarning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                 line: Any = None) -> None:
    if _decoding() and any(d in str(filename) for d in _DECODER_DIRS):
        _forget(message, category, filename, lineno)
        return
    if getattr(_state, "showing", False):  # a hook that wraps this one called back: print it
        text = warnings.formatwarning(message, category, filename, lineno, line)
        (file if file is not None else sys.stderr).write(text)
        return
    _state.showing = True
    try:
        _show_next(message, category, filename, lineno, file, line)
    finally:
        _state.showing = False


def _forget(message: Any, category: Any, filename: str, lineno: int) -> None:
    """Take a dropped warning out of its module's ``__warningregistry__``, where Python's
    default once-per-location rule recorded it as shown."""
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == filename:
            registry = getattr(module, "__warningregistry__", None)
            if isinstance(registry, dict):
                registry.pop((str(message), category, lineno), None)


def _install() -> None:
    """Put the hook in front of whatever ``warnings.showwarning`` is now (once per change)."""
    global _show_next
    if warnings.showwarning is not _showwarning:
        _show_next, warnings.showwarning = warnings.showwarning, _showwarning


logging.getLogger("tifffile").addFilter(_DropWhileDecoding())
_install()


def pillow_pixel_limit() -> int | None:
    """The most pixels Pillow decodes (twice ``PIL.Image.MAX_IMAGE_PIXELS``); None: no limit."""
    most = Image.MAX_IMAGE_PIXELS
    return None if most is None else 2 * int(most)


def allow_pixels(limit: int | None) -> None:
    """Let Pillow decode images of up to ``limit`` pixels (None: any size), for a program whose
    user set that limit. Raises Pillow's limit only, never lowers it."""
    most = pillow_pixel_limit()
    if most is None:
        return
    if limit is None:
        Image.MAX_IMAGE_PIXELS = None
    elif limit > most:
        Image.MAX_IMAGE_PIXELS = limit // 2 + 1


def bomb_reason(exc: Exception, max_pixels: int | None) -> str:
    """The reason for an image Pillow refused as a decompression bomb, in rsir's words: rsir's
    own limit when the image is over it too, else Pillow's and how to lift it."""
    text = str(exc)
    start, end = text.find("(") + 1, text.find(" pixels")
    size = int(text[start:end]) if 0 < start < end and text[start:end].isdigit() else None
    if size is not None and max_pixels is not None and size > max_pixels:
        return f"{size} pixels is over the {max_pixels}-pixel limit"
    return (f"{size if size is not None else 'its'} pixels is over Pillow's limit of "
            f"{pillow_pixel_limit()} pixels (twice PIL.Image.MAX_IMAGE_PIXELS), which applies on "
            f"top of max_pixels; raise it to read this image (rsir index --max-pixels N does)")
