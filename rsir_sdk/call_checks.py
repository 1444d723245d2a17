"""Arguments of the public calls, checked the same way by ``Retriever`` and ``RemoteRetriever``.

Why one module: a search or a write must refuse the same bad argument with the same one line,
whether it runs here or over HTTP, and before any image is decoded or any request is sent.
The value checks themselves are :mod:`rsir_sdk.store.values` and
:func:`rsir_sdk.store.keys.build_filter`; this module holds what both classes do with them.
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .api import Filter
from .errors import InvalidInputError
from .geo import GeoFilter
from .pixels import describe_source
from .store import keys as store_keys
from .store import values as store_values

__all__ = ["check_bearer_token", "check_radius_length", "check_range_radius", "check_search",
           "image_list", "images_with_ids", "radius_bound"]

_TOKEN_CHARACTERS = re.compile(r"[\x21-\x7e]+")


def check_search(k: Any, filter: Filter, radius: Any,
                 place: tuple[Any, Any, Any] = (None,) * 3) -> GeoFilter:
    """Refuse a bad ``k``, ``radius``, ``filter``, ``bbox``, ``near`` or ``time`` (``place``:
    the last three) before any image is decoded; returns the place and period filter."""
    store_values.k(k)
    store_values.radius(radius)
    store_keys.build_filter(filter)
    return GeoFilter.of(*place)


def image_list(images: Any, one: str) -> list[Any]:
    """``images`` as a list; one path or bytes given where a list belongs is refused with one
    line naming the call for a single image (``one``), where ``list()`` would have split a
    path into its characters and failed on an image called after its first letter (an
    ``HxWx3`` array into its rows, a file into its lines). A 4-D array, a ``(N, H, W)`` stack
    and an array of paths are lists of images."""
    single = (isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike))
              or hasattr(images, "read") or isinstance(images, Image.Image)
              or _one_image_array(images))
    if single:  # list() split an HxWx3 array into H "images", a file into its lines
        raise InvalidInputError(f"images must be a list (for one image {one})")
    try:
        return list(images)
    except TypeError:
        raise InvalidInputError(f"images must be a list, not {type(images).__name__} (for one "
                                f"image {one})") from None


def _one_image_array(images: Any) -> bool:
    """Whether ``images`` is a numpy array holding one image (``HxW``, or ``HxWx1/3/4``
    numbers), not several: an array of paths (``df["path"].values``), a stack ``(N, H, W)``
    of grayscale images and a batch ``(N, H, W, C)`` are lists of images."""
    if not isinstance(images, np.ndarray) or images.dtype.kind in "USO":
        return False
    return images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3, 4))


def radius_bound(mode: str, bits: int, fine_bits: int | None) -> tuple[int, str]:
    """The code a radius bounds in ``mode``, as ``(its length, its name)``: the fine code in
    mode appearance (when the bundle has one), else the retrieval code; the one rule of
    ``Retriever`` and the service, for :func:`check_radius_length`."""
    if mode == "appearance" and fine_bits:
        return int(fine_bits), "fine-code"
    return int(bits), "code"


def check_radius_length(radius: int | None, longest: int, what: str = "code") -> None:
    """Refuse a ``radius`` beyond the code it bounds (``longest`` bits: the retrieval code,
    or the fine code in mode appearance and for duplicates), here and in the service alike:
    a radius of 65 on 64-bit codes is a mistake (every item matches), not a request."""
    if radius is not None and not 0 <= radius <= longest:
        raise InvalidInputError(f"radius must be between 0 and {longest} (the {what} length), "
                                f"got {radius}")


def images_with_ids(images: Sequence[Any], ids: Sequence[str] | None,
                    paths: Sequence[str] | None) -> tuple[list[Any], list[str], Sequence[str]]:
    """``(images, ids, paths)`` of an ``add_images`` call, checked, with the defaults filled in.

    ``paths`` default to the sources that are paths (``""`` for the others) and ``ids`` to the
    paths, which needs every source to be a path. Refuses a single path or bytes passed where a
    list belongs, a missing id, a bad id and a count that does not match, each with one
    :class:`~rsir_sdk.errors.InvalidInputError` line.
    """
    images = image_list(images, "pass [image]")
    if paths is None:
        paths = [str(x) if isinstance(x, (str, os.PathLike)) else "" for x in images]
    if ids is None:
        if not all(paths):
            example = next(x for x, p in zip(images, paths) if not p)
            raise InvalidInputError("ids are required when some images are not file paths "
                                    f"(e.g. {describe_source(example)})")
        ids = list(paths)
    checked = store_values.ids(ids)
    if len(checked) != len(images):
        raise InvalidInputError(f"{len(images)} images but {len(checked)} ids")
    return images, checked, paths


def check_bearer_token(token: str | None, what: str) -> None:
    """Refuse a bearer token an HTTP header cannot carry (a newline read from a file with it,
    a space, non-ASCII), naming ``what`` and never the token.

    Why: the client's request then failed as "cannot reach" after four retries, and a service
    started with one answered 401 to every client.
    """
    if token is None or token == "":
        return
    if not isinstance(token, str):
        raise InvalidInputError(f"{what} must be a string, got {type(token).__name__}")
    if not _TOKEN_CHARACTERS.fullmatch(token):
        holds = ("a space or line break (read from a file with its newline?)"
                 if any(c.isspace() for c in token) else "a character outside printable ASCII")
        raise InvalidInputError(f"{what} holds {holds}, which an HTTP Authorization header "
                                f"cannot carry")


def check_range_radius(radius: Any) -> None:
    """``range_search`` takes a radius: ``None``, "no radius" to ``search``, would return
    every item (up to the cap)."""
    if radius is None:
        raise InvalidInputError("range_search needs a radius (an integer >= 0)")
