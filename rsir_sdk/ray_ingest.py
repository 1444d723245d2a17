"""Archive ingestion on Ray: decode and encode on a cluster, write to Milvus from the driver.

Why: one process decodes and encodes a few hundred images a second; an archive of millions wants
many machines. This is :func:`rsir_sdk.ingest.ingest` with its middle stage on Ray Data:

- **listing and resuming on the driver**: the archive is listed once (:mod:`rsir_sdk.archive`)
  and the ids the collection already holds are skipped, exactly as the single-process path;
- **decode + ONNX encode in Ray actors**: each actor opens one onnxruntime session of the
  bundle (CUDA when the worker has a GPU and onnxruntime offers it) and reads images with the
  collection's raster rule; images that cannot be read or encoded come back as failures;
- **writes from the driver** in batches through the collection's store (a Milvus server for a
  cluster; a Milvus Lite file works too on one machine), with the same report file and summary.

The guarantees are those of ``rsir index`` (the same :class:`~rsir_sdk.ingest.IngestRun` does
the bookkeeping and the writes): rows are written only after their image was encoded, as inserts
of ids checked absent just before (or through a bulk load with its journal), and a re-run skips
what is present, so a run killed at any moment and re-run indexes every image exactly once. At
the end a server collection is prepared for search, as by ``rsir index``.

Needs the ``distributed`` extra (``pip install 'rsir-sdk[distributed]'``: ``ray[data]``). The
bundle folder and the images must be readable at the same paths on every worker (a shared file
system), as for any Ray job.

Usually reached through ``Retriever.index(archive, engine="ray")``; :func:`ingest_on_ray` takes
what :func:`rsir_sdk.ingest.ingest` takes (it needs no Retriever, so this module does not import
one: the encoder carries the bundle path, identity and raster rule the actors need):

>>> from rsir_sdk import IngestOptions, Retriever, open_archive
>>> from rsir_sdk.ray_ingest import ingest_on_ray
>>> with Retriever("bundle/", uri="http://milvus:19530", collection="scenes") as r:   # doctest: +SKIP
...     opts = IngestOptions(engine="ray", address="auto", workers=8)
...     summary = ingest_on_ray(r.encoder, r.store, open_archive("archive/"), opts)
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from .archive import ArchiveListing
from .errors import RsirError
from .failures import Failure, FailureReport
from .ingest import IngestInterrupted, IngestProgress, IngestRun, IngestSummary, writes_fine
from .options import IngestOptions
from .ray_head import RayUnavailableError, cluster_address, connect
from .store import MilvusCodeStore, PrepareProgress

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import Encoder

log = logging.getLogger(__name__)

#: rows handed to one actor call
DEFAULT_BATCH = 64
#: name prefixes of Ray Data's threads that hold object references while they work (Ray 2.60)
RAY_DATA_WORKERS = ("iter_threaded", "StreamingExecutor-", "ray-data-metadata-prefetch")
#: seconds the driver waits for them to end before it disconnects anyway
RAY_DATA_STOP_S = 30.0


def _pillow_guard() -> dict[str, Any]:
    """This process's Pillow decompression-bomb guard, for the actors to decode alike."""
    from PIL import Image

    return {"MAX_IMAGE_PIXELS": Image.MAX_IMAGE_PIXELS}


class EncodeActor:
    """A Ray Data actor: one Encoder (one onnxruntime session) for the bundle, many batches;
    with ``fine``, each batch's fine codes too, from the same session run (issue 20)."""

    def __init__(self, bundle: str, rule: dict[str, Any], max_pixels: int | None, threads: int,
                 fine: bool = False, pillow: dict[str, Any] | None = None):
        from .encoder import Encoder

        if pillow is not None:  # the driver's Pillow guard (rsir index --max-pixels raised it)
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = pillow["MAX_IMAGE_PIXELS"]
        self.encoder = Encoder(bundle, raster_rule=rule, threads=threads)
        self.max_pixels = max_pixels
        self.fine = bool(fine)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .images import read_image
        from .preprocess import prepare

        files = [str(f) for f in batch["file"]]
        prepared: list[np.ndarray | None] = []
        errors: list[str] = []
        georefs: list[str] = []
        for f in files:
            try:
                raster = read_image(f, rule=self.encoder.raster_rule, max_pixels=self.max_pixels)
                prepared.append(prepare(raster.rgb, self.encoder.bundle.preprocess))
                errors.append("")
                georefs.append(_dumps(raster.georef))
            except RsirError as exc:
                prepared.append(None)
                errors.append("read\t" + getattr(exc, "reason", str(exc)))
                georefs.append("{}")
            except Exception as exc:  # a decoder bug on one odd file must not stop the job
                prepared.append(None)
                errors.append(f"read\t{type(exc).__name__}: {exc}")
                georefs.append("{}")
        codes = np.zeros((len(files), self.encoder.bits // 8), np.uint8)
        fine = np.zeros((len(files), (self.encoder.fine_bits or 8) // 8), np.uint8)
        ok = {i: p for i, p in enumerate(prepared) if p is not None}
        if ok:
            try:
                codes[list(ok)], fine[list(ok)] = self._run(np.stack(list(ok.values())))
            except Exception:  # find the culprit one image at a time
                for i, arr in ok.items():
                    try:
                        one, one_fine = self._run(arr[None])
                        codes[i], fine[i] = one[0], one_fine[0]
                    except Exception as exc:
                        errors[i] = f"encode\t{type(exc).__name__}: {exc}"
        out = {"index": batch["index"], "code": codes, "error": np.array(errors, dtype=object),
               "georef": np.array(georefs, dtype=object)}
        if self.fine:
            out["fine"] = fine
        return out

    def _run(self, arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes and fine codes (zeros without ``fine``) of prepared images: one session run."""
        if not self.fine:
            codes = self.encoder.encode_arrays(arrays)
            return codes, np.zeros((len(arrays), 1), np.uint8)
        both = self.encoder.encode_both_arrays(arrays)
        assert both.fine is not None
        return both.codes, both.fine


def _take(run: IngestRun, todo: list[Any], batch: dict[str, np.ndarray], fine: bool) -> None:
    """Hand one batch of actor results to ``run``: failures reported, the rest queued."""
    items, keep, georefs = [], [], []
    for row, (i, error, georef) in enumerate(zip(batch["index"], batch["error"], batch["georef"])):
        item = todo[int(i)]
        if error:
            stage, _, reason = str(error).partition("\t")
            run.fail(Failure(item.id, str(item.file), stage, reason))
            continue
        items.append(item)
        keep.append(row)
        georefs.append(json.loads(str(georef)))
    if items:
        codes = np.stack([np.asarray(batch["code"][r], np.uint8) for r in keep])
        fines = np.stack([np.asarray(batch["fine"][r], np.uint8) for r in keep]) if fine else None
        run.add(items, codes, georefs, fines)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def ingest_on_ray(
    encoder: "Encoder",
    store: MilvusCodeStore,
    archive: ArchiveListing,
    options: IngestOptions | None = None,
    *,
    report: FailureReport | None = None,
    progress: Callable[[IngestProgress], None] | None = None,
    on_prepare: Callable[[PrepareProgress], None] | None = None,
) -> IngestSummary:
    """Index ``archive`` into ``store`` with decode + encode on Ray; what
    :func:`rsir_sdk.ingest.ingest` does, with the same arguments and summary.

    ``encoder`` is the driver's :class:`~rsir_sdk.Encoder` (its bundle path, identity and
    raster rule go to the actors; it encodes nothing here). From ``options``: ``address`` (a
    Ray cluster, ``"auto"``, ``"ray://head:10001"``; ``None`` starts a local Ray with
    ``workers`` CPUs), ``workers`` actors (default 2), each running one onnxruntime session
    with ``ray.threads_per_worker`` threads (and ``ray.gpus_per_worker`` GPUs) on batches of
    ``batch_size`` images (default 64); the others as for :func:`~rsir_sdk.ingest.ingest`.
    """
    ray = _import_ray()
    opts = options if options is not None else IngestOptions(engine="ray")
    run = IngestRun(store, encoder.bundle.identity(), archive, opts, report=report,
                    progress=progress, on_prepare=on_prepare)
    try:
        return _run_on_ray(ray, run, encoder, store, opts)
    except IngestInterrupted:
        raise
    except KeyboardInterrupt:  # while Ray started or planned: said as any interruption is
        raise run.interrupted() from None  # (a bare "interrupted", no count, no resume hint)
    finally:
        run.close()


def _run_on_ray(ray: Any, run: IngestRun, encoder: "Encoder", store: MilvusCodeStore,
                opts: IngestOptions) -> IngestSummary:
    """The Ray part of :func:`ingest_on_ray`: connect, map the actors, take their batches."""
    workers = opts.workers or 2
    batch_size = opts.batch_size or DEFAULT_BATCH
    threads, gpus = opts.ray.threads_per_worker, opts.ray.gpus_per_worker
    fine = writes_fine(encoder, store)
    todo = list(run.unseen())  # listing and resuming stay on the driver
    if not todo:
        return run.finish()
    # a local Ray gets CPUs for every actor's threads (with --workers CPUs, --threads 2 placed
    # half the actors, and more threads than workers none at all)
    connection = connect(ray, opts.address, workers * threads)
    threads_before = set(threading.enumerate())
    try:
        # a local Ray's GPUs are what this machine has
        _check_gpus(ray, gpus, local=cluster_address(opts.address) is None)
        rows = [{"index": i, "file": str(it.file)} for i, it in enumerate(todo)]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size,
                                                                       workers * 8)))
        ds = ds.map_batches(
            EncodeActor, batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads, num_gpus=gpus or None,
            fn_constructor_kwargs={"bundle": str(encoder.bundle.path),
                                   "rule": encoder.raster_rule.to_dict(),
                                   "max_pixels": opts.max_pixels, "threads": threads,
                                   "fine": fine, "pillow": _pillow_guard()},
        )
        # the actors' batches as they come: the run writes every upsert_batch rows or
        # flush_seconds, as the local engine does (blocks of upsert_batch rows reached the
        # driver only when whole: a Ctrl-C after a minute of encoding had written nothing)
        batches = iter(ds.iter_batches(batch_size=min(batch_size, opts.upsert_batch),
                                       batch_format="numpy"))
        try:
            with warnings.catch_warnings():  # Ray Data's notices (a pool larger than its
                warnings.filterwarnings("ignore", module=r"ray(\.|$)")  # input) are not ours
                for batch in batches:
                    _take(run, todo, batch, fine)
            return run.finish()
        except KeyboardInterrupt:
            raise run.interrupted() from None
        finally:
            _stop_batches(batches, threads_before)
    finally:
        if connection is not None:  # this call connected (and started a local Ray): undo it
            connection.close()


def _check_gpus(ray: Any, gpus: float, local: bool) -> None:
    """Refuse GPUs per actor that a local Ray does not have: the actors waited for them
    forever, the progress at 0 and no word. A cluster's nodes may come with the demand (an
    autoscaler adds GPU nodes for it): there, one warning."""
    if not gpus:
        return
    have = float(ray.cluster_resources().get("GPU", 0))
    if have < gpus and not local:
        log.warning("gpus_per_worker %g, but the Ray cluster has %g GPU(s) now: the actors "
                    "wait until it has (an autoscaler adds them; a fixed cluster never does)",
                    gpus, have)
    elif have < gpus:
        raise RayUnavailableError(f"gpus_per_worker (--gpus-per-worker) {gpus:g}, but the local Ray has "
                                  f"{have:g} GPU(s): its actors would wait for them forever; "
                                  f"give 0 (onnxruntime on the CPUs)")


def _stop_batches(batches: Iterator[Any], threads_before: set[threading.Thread]) -> None:
    """Close Ray Data's batch iterator and wait (up to :data:`RAY_DATA_STOP_S`) for the threads
    of it that hold object references to end, before the driver disconnects.

    Why: after an interruption those threads (Ray 2.60: ``iter_threaded``, the executor and
    its metadata fetcher) finish the batch in hand and drop its references as they end; one
    that did so after ``ray.shutdown()`` made Ray's core end the process (exit status 1, no
    word; "The core worker has already been shutdown" in its log): 4 of 10 runs of a Ctrl-C
    after the second write, measured 2026-12-07. Threads that only wait (the prefetcher, the
    usage poller) are not waited for.
    """
    close = getattr(batches, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):  # Ray's own error on the way out is not ours
            close()
    deadline = time.monotonic() + RAY_DATA_STOP_S
    for thread in threading.enumerate():
        if thread in threads_before or not thread.name.startswith(RAY_DATA_WORKERS):
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    gc.collect()  # the references those threads dropped, released now and not at shutdown


def _import_ray() -> Any:
    # Ray's C++ core and its start-up notices write to stderr; the library keeps them quiet
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailableError(
            "ingestion on Ray needs the distributed extra: pip install 'rsir-sdk[distributed]'"
        ) from None
    return ray
