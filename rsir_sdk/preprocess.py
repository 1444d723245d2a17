"""Resize and centre-crop an RGB image to an encoder's input, exactly as its bundle records.

Training (``export/``) and serving (``rsir_sdk.Encoder``) both call :func:`prepare`, so the
pixels a model was trained on and the pixels it is served are made by the same code. Scaling
and mean/std normalisation happen inside the ONNX graph, not here.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from PIL import Image

_INTERPOLATION = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def crop_size(preprocess: Mapping[str, Any]) -> tuple[int, int]:
    """The ``(height, width)`` the preprocessing produces."""
    crop = preprocess["crop"]
    if isinstance(crop, int):
        return crop, crop
    h, w = crop
    return int(h), int(w)


def prepare(img: np.ndarray, preprocess: Mapping[str, Any]) -> np.ndarray:
    """Resize and centre-crop an RGB ``uint8 (H, W, 3)`` image to ``uint8 (h, w, 3)``.

    ``preprocess["resize"]`` = an int resizes the shorter side to it (aspect kept), then the
    centre ``preprocess["crop"]`` = ``[h, w]`` is cut out; ``None`` resizes straight to
    ``[h, w]``. Resampling is Pillow's ``preprocess["interpolation"]`` (default bilinear).

    >>> prepare(np.zeros((300, 400, 3), np.uint8), {"resize": 256, "crop": [224, 224]}).shape
    (224, 224, 3)
    """
    h, w = crop_size(preprocess)
    method = _INTERPOLATION[str(preprocess.get("interpolation", "bilinear")).lower()]
    pil = Image.fromarray(img)
    resize = preprocess.get("resize")
    if resize is None:
        if pil.size != (w, h):
            pil = pil.resize((w, h), method)
        return np.asarray(pil, dtype=np.uint8)
    resize = int(resize)
    iw, ih = pil.size
    if min(iw, ih) != resize:
        if iw <= ih:
            nw, nh = resize, max(1, round(ih * resize / iw))
        else:
            nw, nh = max(1, round(iw * resize / ih)), resize
        pil = pil.resize((nw, nh), method)
    iw, ih = pil.size
    if ih < h or iw < w:
        pil = pil.resize((max(iw, w), max(ih, h)), method)
        iw, ih = pil.size
    top = (ih - h) // 2
    left = (iw - w) // 2
    return np.asarray(pil.crop((left, top, left + w, top + h)), dtype=np.uint8)
