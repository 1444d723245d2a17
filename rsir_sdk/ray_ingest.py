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

>>> from rsir_sdk import Retriever
>>> from rsir_sdk.ray_ingest import ingest_on_ray
>>> with Retriever("bundle/", uri="http://milvus:19530", collection="scenes") as r:   # doctest: +SKIP
...     summary = ingest_on_ray(r, r_listing, address="auto", workers=8)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from .archive import ArchiveListing
from .errors import RsirError
from .failures import Failure, FailureReport
from .images import DEFAULT_MAX_PIXELS
from .ingest import IngestProgress, IngestRun, IngestSummary
from .store import PrepareProgress

if TYPE_CHECKING:  # pragma: no cover
    from .retriever import Retriever

log = logging.getLogger(__name__)

#: rows handed to one actor call
DEFAULT_BATCH = 64


class RayUnavailableError(RsirError, RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


class EncodeActor:
    """A Ray Data actor: one Encoder (one onnxruntime session) for the bundle, many batches."""

    def __init__(self, bundle: str, rule: dict[str, Any], max_pixels: int | None, threads: int):
        from .encoder import Encoder

        self.encoder = Encoder(bundle, raster_rule=rule, threads=threads)
        self.max_pixels = max_pixels

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
        nbytes = self.encoder.bits // 8
        codes = np.zeros((len(files), nbytes), np.uint8)
        ok = {i: p for i, p in enumerate(prepared) if p is not None}
        if ok:
            try:
                codes[list(ok)] = self.encoder.encode_arrays(np.stack(list(ok.values())))
            except Exception:  # find the culprit one image at a time
                for i, arr in ok.items():
                    try:
                        codes[i] = self.encoder.encode_arrays(arr[None])[0]
                    except Exception as exc:
                        errors[i] = f"encode\t{type(exc).__name__}: {exc}"
        return {"index": batch["index"], "code": codes, "error": np.array(errors, dtype=object),
                "georef": np.array(georefs, dtype=object)}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def ingest_on_ray(
    retriever: "Retriever",
    archive: ArchiveListing,
    *,
    address: str | None = None,
    workers: int = 2,
    threads_per_worker: int = 1,
    gpus_per_worker: float = 0.0,
    skip_existing: bool = True,
    only_ids: Iterable[str] | None = None,
    relative_paths: bool = False,
    batch_size: int = DEFAULT_BATCH,
    upsert_batch: int = 512,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    report: FailureReport | None = None,
    progress: Callable[[IngestProgress], None] | None = None,
    bulk_dir: str | os.PathLike | None = None,
    prepare: str = "auto",
    on_prepare: Callable[[PrepareProgress], None] | None = None,
) -> IngestSummary:
    """Index ``archive`` into ``retriever``'s collection with decode + encode on Ray.

    ``address``: a Ray cluster (``"auto"``, ``"ray://head:10001"``); ``None`` starts a local
    Ray with ``workers`` CPUs. ``workers`` actors each run one onnxruntime session with
    ``threads_per_worker`` threads (and ``gpus_per_worker`` GPUs). The other arguments are
    those of :func:`rsir_sdk.ingest.ingest`; so is the returned summary.
    """
    ray = _import_ray()
    run = IngestRun(retriever.store, retriever.bundle.identity(), archive, only_ids=only_ids,
                    skip_existing=skip_existing, relative_paths=relative_paths,
                    upsert_batch=upsert_batch, report=report, progress=progress,
                    bulk_dir=bulk_dir, prepare=prepare, on_prepare=on_prepare)
    todo = list(run.unseen())  # listing and resuming stay on the driver
    if not todo:
        return run.finish()
    started_here = _init_ray(ray, address, workers)
    try:
        rows = [{"index": i, "file": str(it.file)} for i, it in enumerate(todo)]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size,
                                                                       workers * 8)))
        ds = ds.map_batches(
            EncodeActor, batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads_per_worker, num_gpus=gpus_per_worker or None,
            fn_constructor_kwargs={"bundle": str(retriever.bundle.path),
                                   "rule": retriever.raster_rule.to_dict(),
                                   "max_pixels": max_pixels, "threads": threads_per_worker},
        )
        try:
            for batch in ds.iter_batches(batch_size=upsert_batch, batch_format="numpy"):
                items, codes, georefs = [], [], []
                for i, code, error, georef in zip(batch["index"], batch["code"], batch["error"],
                                                  batch["georef"]):
                    item = todo[int(i)]
                    if error:
                        stage, _, reason = str(error).partition("\t")
                        run.fail(Failure(item.id, str(item.file), stage, reason))
                        continue
                    items.append(item)
                    codes.append(np.asarray(code, np.uint8))
                    georefs.append(json.loads(str(georef)))
                if items:
                    run.add(items, np.stack(codes), georefs)
            return run.finish()
        except KeyboardInterrupt:
            raise run.interrupted() from None
    finally:
        if started_here:
            ray.shutdown()


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


@contextlib.contextmanager
def _stderr_to_file() -> Iterator[None]:
    """Send what Ray's C++ start-up writes to file descriptor 2 into a log file instead."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.NamedTemporaryFile("w+b", prefix="rsir-ray-init-", suffix=".log",
                                     delete=False) as log_file:
        os.dup2(log_file.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    log.debug("Ray start-up messages are in %s", log_file.name)


#: tries at starting a local Ray when its start-up times out (a loaded machine)
START_ATTEMPTS = 2


def _init_ray(ray: Any, address: str | None, workers: int) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.ERROR, "configure_logging": True}
    for name in ("ray", "ray.data", "ray._private", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Ray gives a new local node fixed times to start (30 s for the raylet to register, a wait
    # for the GCS port file); on a small, loaded machine (2 cores beside a Milvus server) one
    # can run out once and succeed at the next try
    attempts = 1 if address else START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            with _stderr_to_file(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Ray's start-up and connection warnings
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    ray.init(num_cpus=max(1, workers), **kwargs)
            break
        except Exception as exc:  # ConnectionError, RuntimeError, ... from Ray's own start-up
            # Ray's start-up time-outs: "... timed out during startup ..." (the raylet) and
            # "Timed out waiting for file .../gcs_server_port_..." (the GCS), both seen in CI
            timed_out = "timed out" in str(exc).lower()
            if attempt < attempts and timed_out:
                log.info("a local Ray did not start within Ray's start-up limit; "
                         "trying again (%d of %d)", attempt + 1, attempts)
                with contextlib.suppress(Exception), _stderr_to_file():
                    ray.shutdown()
                continue
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            hint = (f" (after {attempts} tries; the machine may be too loaded: --engine local "
                    "needs no Ray)" if attempts > 1 and timed_out else "")
            raise RayUnavailableError(
                f"cannot start {where}: {type(exc).__name__}: {exc}{hint}") from None
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    return True
