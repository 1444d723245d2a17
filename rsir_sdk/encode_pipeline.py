"""Decode and encode images in order: a thread pool of decoders feeding the encoder in batches.

Why: an archive's images must be decoded (JPEG, PNG, GeoTIFF) while the encoder runs, so the
encoder never waits on a decoder, and one bad file must become a reported
:class:`~rsir_sdk.failures.Failure`, never the end of a million-image run. :func:`iter_codes`
is that pipeline; :func:`rsir_sdk.ingest.ingest` writes what it yields, and evaluation reuses it.
"""

from __future__ import annotations

import collections
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, Mapping

import numpy as np

from .archive import Item
from .encoder import Encoder
from .errors import ImageLoadError
from .failures import Failure
from .images import DEFAULT_MAX_PIXELS, read_image
from .preprocess import prepare
from .rasters import RasterRule

# the logger this pipeline had in rsir_sdk.ingest: a user's logging settings keep applying
log = logging.getLogger("rsir_sdk.ingest")


@dataclass(frozen=True)
class EncodedBatch:
    """Items that were decoded and encoded, their packed codes and georeferencing, and their
    fine codes when asked for (from the same forward pass)."""

    items: list[Item]
    codes: np.ndarray  # uint8 (n, bits/8)
    georefs: list[dict[str, Any]]
    #: packed fine codes ``uint8 (n, fine_bits/8)`` (issue 20); None when not asked for
    fine: np.ndarray | None = None


def iter_codes(
    encoder: Encoder,
    items: Iterable[Item],
    *,
    rule: RasterRule | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_failure: Callable[[Failure], None] | None = None,
    fine: bool = False,
) -> Generator[EncodedBatch, None, None]:
    """Decode ``items`` in a thread pool and encode them in batches, in order.

    Decoding (Pillow, tifffile, numpy) releases the GIL, and so does onnxruntime, so ``workers``
    threads prepare the next images while the encoder runs. Images that cannot be read or
    encoded go to ``on_failure`` and are left out of the batches. ``fine``: each batch carries
    the fine codes too (:meth:`~rsir_sdk.Encoder.encode_both_arrays`: the same session run, so
    each image is still encoded once; the bundle must have a fine code).

    >>> for batch in iter_codes(enc, open_archive("archive/").items):     # doctest: +SKIP
    ...     print(len(batch.items), batch.codes.shape)
    """
    rule = encoder.raster_rule if rule is None else rule
    workers = max(1, int(workers or default_workers()))
    bs = max(1, int(batch_size or encoder.batch_size))
    window = workers * 4 + bs
    report = on_failure or (lambda f: log.warning("not indexed: %s (%s)", f.path, f.reason))
    preprocess = encoder.bundle.preprocess
    source = iter(items)
    pending: collections.deque[tuple[Item, Future]] = collections.deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rsir-decode")
    batch: list[tuple[Item, np.ndarray, dict]] = []
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                pending.append((item, pool.submit(_prepare, item, rule, preprocess, max_pixels)))
            if not pending:
                break
            item, fut = pending.popleft()
            result = fut.result()
            if isinstance(result, Failure):
                report(result)
            else:
                batch.append((item, *result))
            if len(batch) >= bs:
                out = _encode(encoder, batch, report, fine)
                batch = []
                if out is not None:
                    yield out
        if batch:
            out = _encode(encoder, batch, report, fine)
            if out is not None:
                yield out
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _prepare(item: Item, rule: RasterRule, preprocess: Mapping[str, Any], max_pixels):
    try:
        raster = read_image(item.file, rule=rule, max_pixels=max_pixels)
        return prepare(raster.rgb, preprocess), raster.georef
    except ImageLoadError as exc:
        return Failure(item.id, str(item.file), "read", exc.reason)
    except MemoryError:
        return Failure(item.id, str(item.file), "read", "not enough memory to decode the image")
    except Exception as exc:  # a decoder bug on one odd file must not stop a million-image run
        return Failure(item.id, str(item.file), "read", f"{type(exc).__name__}: {exc}")


def _run(encoder: Encoder, arrays: np.ndarray, fine: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Retrieval codes (and fine codes when ``fine``) of prepared images: one session run."""
    if not fine:
        return encoder.encode_arrays(arrays), None
    both = encoder.encode_both_arrays(arrays)
    return both.codes, both.fine


def _encode(encoder: Encoder, batch, report, fine: bool = False) -> EncodedBatch | None:
    items = [b[0] for b in batch]
    try:
        codes, fines = _run(encoder, np.stack([b[1] for b in batch]), fine)
        return EncodedBatch(items, codes, [b[2] for b in batch], fines)
    except Exception as exc:  # fall back to one image at a time to find the culprit
        log.warning("a batch of %d failed to encode (%s); retrying one by one", len(batch), exc)
    kept: list[tuple[Item, dict[str, Any]]] = []
    parts: list[tuple[np.ndarray, np.ndarray | None]] = []
    for item, arr, geo in batch:
        try:
            parts.append(_run(encoder, arr[None], fine))
            kept.append((item, geo))
        except Exception as exc:
            report(Failure(item.id, str(item.file), "encode", f"{type(exc).__name__}: {exc}"))
    if not kept:
        return None
    fines = np.concatenate([p[1] for p in parts if p[1] is not None]) if fine else None
    return EncodedBatch([k[0] for k in kept], np.concatenate([p[0] for p in parts]),
                        [k[1] for k in kept], fines)


def default_workers() -> int:
    """Decoding threads: the number of CPUs, at least 2 and at most 8."""
    return max(2, min(8, os.cpu_count() or 2))
