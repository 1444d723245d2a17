"""The argument types of ``rsir train``/``rsir quantize`` (:mod:`rsir_train.cli`): each turns
one option's text into its value or one ``argparse`` error line (exit 2), so a bad value fails
before any data is read, not deep in torch or numpy, and is never taken as given."""

from __future__ import annotations

import argparse
import math
from typing import Any

from rsir_sdk.codes import validate_bits
from rsir_sdk.errors import CodeLengthError

__all__ = ["BELOW_ONE", "NON_NEGATIVE", "NON_NEGATIVE_INT", "POSITIVE_NUMBER", "bits_type",
           "bounded", "candidates", "fine_code", "int_list", "positive", "training_batch"]


def bits_type(text: str) -> int:
    """``--bits``: a multiple of 8 in 8..32768 (the code lengths Milvus stores)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    try:
        return validate_bits(value)
    except CodeLengthError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fine_code(text: str) -> Any:
    """``--fine-code pca``, ``split``, ``layout``, optionally ``:BITS`` (``split:256``), as a
    ``FineCodeConfig``."""
    from .fine_code import FineCodeConfig

    kind, _, bits = text.strip().partition(":")
    default = {"pca": 128, "split": 256, "layout": 320}
    if kind not in default or (bits and not bits.isdigit()):
        raise argparse.ArgumentTypeError(f"must be pca, split or layout, optionally :BITS (e.g. "
                                         f"split:256), got {text!r}")
    n = int(bits) if bits else default[kind]
    step = {"split": 32, "layout": 40}.get(kind, 8)
    if n < step or n % step:
        raise argparse.ArgumentTypeError(f"{kind} fine codes take a positive multiple of {step} "
                                         f"bits, got {n}")
    return FineCodeConfig(kind, n)


def candidates(text: str) -> tuple[str, ...]:
    from .ahcl.config import CANDIDATES  # imports torch: only when the flag is given

    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"must be among {', '.join(CANDIDATES)}, comma-separated, got {text!r}")
    return names


def positive(text: str) -> int:
    """A count that must be at least 1 (batch size, epochs, threads, iterations): 0 was
    a division by zero deep in training, or silently the default."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def bounded(convert: Any, low: float | None = None, high: float | None = None, *,
            above: bool = False, below: bool = False) -> Any:
    """An argparse type: ``convert(text)`` within ``[low, high]`` (``above``/``below``: the
    bound itself excluded). A negative ``--lr`` or ``--num-samples`` failed deep in torch or
    numpy, and ``--patience -1`` or ``--lambda -3`` were taken as given."""
    kind = "an integer" if convert is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if low is not None and (value < low or (above and value == low)):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {low:g}, got {text}")
        if high is not None and (value > high or (below and value == high)):
            raise argparse.ArgumentTypeError(f"must be {'<' if below else '<='} {high:g}, got {text}")
        return value

    return parse


NON_NEGATIVE_INT = bounded(int, 0)
NON_NEGATIVE = bounded(float, 0)
POSITIVE_NUMBER = bounded(float, 0, above=True)
BELOW_ONE = bounded(float, 0, 1, below=True)


def training_batch(text: str) -> int:
    """AHCL's training batch: at least 2 (a batch of one image cannot be normalised, so every
    batch was skipped and the bundle written untrained, at chance mAP, with exit 0)."""
    value = positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (a training batch of one image "
                                         f"trains nothing), got {value}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be integers separated by commas, got {text!r}") from None


# --------------------------------------------------------------------------- parsers
