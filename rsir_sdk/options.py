"""Options passed as values: one frozen :class:`IngestOptions` from ``Retriever.index`` (and
``rsir index``, and ``RemoteRetriever.index`` over HTTP) down to both ingestion engines.

Why a value: the same dozen settings used to be threaded by hand through four wide signatures
(``Retriever.index``, ``ingest``, ``ingest_on_ray``, ``IngestRun``); a value is checked once,
where it is made, and each layer reads the fields it needs.

>>> opts = IngestOptions(label_from="parent", workers=4)
>>> opts.engine, opts.skip_existing
('local', True)
>>> IngestOptions(prepare="sometimes")
Traceback (most recent call last):
...
rsir_sdk.errors.InvalidInputError: prepare must be auto, always or never, got 'sometimes'
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .archive import IMAGE_EXTENSIONS, LABEL_FROM
from .errors import InvalidInputError
from .images import DEFAULT_MAX_PIXELS

__all__ = ["ENGINES", "PREPARE", "IndexOptions", "IngestOptions", "RayOptions", "unknown_fields"]

ENGINES = ("local", "ray")
PREPARE = ("auto", "always", "never")


def _positive_int(name: str, value: Any, *, none_ok: bool = False) -> int | None:
    """``value`` as a positive ``int`` (a numpy integer too); anything else (``True`` is not a
    count) refused in one line."""
    if value is None and none_ok:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < 1:
        extra = " or None" if none_ok else ""
        raise InvalidInputError(f"{name} must be a positive integer{extra}, got {value!r}")
    return int(value)



def _iterable(value: Any) -> bool:
    return hasattr(value, "__iter__")


def unknown_fields(value: Any, changes: Mapping[str, Any]) -> list[str]:
    """The names in ``changes`` that are not fields of the dataclass ``value``, sorted: what an
    options value's ``replace`` refuses in one line (ingest here, quantize in rsir_train)."""
    return sorted(set(changes) - {f.name for f in dataclasses.fields(value)})

@dataclass(frozen=True)
class RayOptions:
    """The Ray engine's own knobs (``IngestOptions(engine="ray", ray=RayOptions(...))``).

    ``threads_per_worker``: onnxruntime threads (and CPUs reserved) per Ray actor;
    ``gpus_per_worker``: GPUs per actor (0: CPU actors; a fraction shares a GPU).

    >>> RayOptions(threads_per_worker=2).gpus_per_worker
    0.0
    """

    threads_per_worker: int = 1
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        _positive_int("ray.threads_per_worker", self.threads_per_worker)
        g = self.gpus_per_worker
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not g >= 0:
            raise InvalidInputError(f"ray.gpus_per_worker must be a number >= 0, got {g!r}")
        object.__setattr__(self, "gpus_per_worker", float(g))


@dataclass(frozen=True)
class IndexOptions:
    """How a new server collection is indexed and searched (``Retriever(index_options=...)``).

    ``index_type``: ``AUTO``/``None`` (BIN_FLAT, or BIN_IVF_FLAT with a calibrated nprobe when
    large and structured), ``BIN_FLAT`` (exact), ``BIN_IVF_FLAT`` or ``HNSW`` (Milvus Lite has
    BIN_FLAT only); ``index_params`` (e.g. ``{"nlist": 1024}``) and ``search_params`` (e.g.
    ``{"nprobe": 16}``) go to Milvus as they are. Why a value: these three travel together
    from the command line to :class:`~rsir_sdk.MilvusCodeStore`.

    >>> IndexOptions(index_type="bin_ivf_flat", index_params={"nlist": 64}).index_type
    'BIN_IVF_FLAT'
    """

    index_type: str | None = None
    index_params: Mapping[str, Any] | None = None
    search_params: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.index_type is not None:
            if not isinstance(self.index_type, str):
                raise InvalidInputError(f"index_type must be a string, got {self.index_type!r}")
            object.__setattr__(self, "index_type", self.index_type.upper())
        for name in ("index_params", "search_params"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise InvalidInputError(f"{name} must be a mapping (JSON object), got {value!r}")
            if value is not None:
                object.__setattr__(self, name, dict(value))

    def store_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~rsir_sdk.MilvusCodeStore` these options set."""
        return {"index_type": self.index_type, "index_params": self.index_params,
                "search_params": self.search_params}


@dataclass(frozen=True)
class IngestOptions:
    """How an archive is listed, which of its images are indexed, and how.

    Listing (those of :func:`rsir_sdk.archive.open_archive`): ``label_from`` (``none``,
    ``parent``, ``top``: labels from a folder archive's folders), ``root`` (a CSV manifest's
    image root), ``path_column``, ``id_column``, ``label_column`` (a manifest's columns),
    ``extensions`` (a folder's image file extensions).

    Which images: ``skip_existing`` (skip ids the collection holds: resume; ``False`` re-encodes
    them as upserts), ``only_ids`` (index only these, e.g. the ids of a failure report),
    ``relative_paths`` (store paths relative to the archive root instead of absolute ones),
    ``prune`` (after the run, delete every item whose id the listing does not hold: files
    removed or renamed since they were indexed; without it such items stay, counted in the
    summary's ``not_listed``).

    How: ``engine`` (``local`` threads, or ``ray``: the ``distributed`` extra) with ``address``
    (a Ray cluster; ``None`` starts a local Ray), ``workers`` (decoding threads or Ray actors),
    ``batch_size`` (images per encoder call), ``upsert_batch`` (rows per write),
    ``flush_seconds`` (pending rows are written after this long), ``max_pixels`` (the
    decompression-bomb guard), ``bulk_dir`` (a server: load through Milvus' bulk import staging
    files here), ``prepare`` (``auto``, ``always``, ``never``: leave the collection ready to
    search at the end), ``ray`` (:class:`RayOptions`: the Ray engine's threads and GPUs per
    actor). ``workers`` and ``batch_size`` default to the engine's own choice (local: the CPUs,
    2..8 threads, and the encoder's batch; Ray: 2 actors of 64 images).

    Bad values raise :class:`~rsir_sdk.errors.InvalidInputError` (one line) where the value is
    made, before anything is listed or written.
    """

    label_from: str = "none"
    root: str | None = None
    path_column: str = "path"
    id_column: str | None = None
    label_column: str | None = None
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    skip_existing: bool = True
    only_ids: frozenset[str] | None = None
    relative_paths: bool = False
    prune: bool = False
    engine: str = "local"
    address: str | None = None
    workers: int | None = None
    batch_size: int | None = None
    upsert_batch: int = 512
    flush_seconds: float = 10.0
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    bulk_dir: str | None = None
    prepare: str = "auto"
    ray: RayOptions = RayOptions()

    def __post_init__(self) -> None:
        fix = object.__setattr__  # frozen: normalise once, here
        for name in ("root", "bulk_dir"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (str, os.PathLike)):
                    raise InvalidInputError(f"{name} must be a folder path, got "
                                            f"{type(value).__name__} {value!r:.40}")
                fix(self, name, os.fspath(value))
        if isinstance(self.extensions, str) or not _iterable(self.extensions):
            raise InvalidInputError(f"extensions must be a list of suffixes, e.g. ['.jpg', "
                                    f"'.tif'], got {self.extensions!r:.40}")
        fix(self, "extensions", tuple(self.extensions))
        if self.only_ids is not None:
            if isinstance(self.only_ids, str) or not _iterable(self.only_ids):
                raise InvalidInputError(f"only_ids must be a collection of ids, got "
                                        f"{self.only_ids!r:.40}")
            fix(self, "only_ids", frozenset(str(i) for i in self.only_ids))
        if isinstance(self.ray, Mapping):  # from JSON
            fix(self, "ray", _ray_from(self.ray))
        elif not isinstance(self.ray, RayOptions):
            raise InvalidInputError(f"ray must be a RayOptions value, got {self.ray!r}")
        self._check()

    def _check(self) -> None:
        if self.label_from not in LABEL_FROM:
            raise InvalidInputError(f"label_from must be one of {', '.join(LABEL_FROM)}, "
                                    f"got {self.label_from!r}")
        if self.engine not in ENGINES:
            raise InvalidInputError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        if self.prepare not in PREPARE:
            raise InvalidInputError(f"prepare must be auto, always or never, got {self.prepare!r}")
        for name in ("workers", "batch_size", "max_pixels"):
            object.__setattr__(self, name, _positive_int(name, getattr(self, name), none_ok=True))
        object.__setattr__(self, "upsert_batch", _positive_int("upsert_batch", self.upsert_batch))
        f = self.flush_seconds
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0:
            raise InvalidInputError(f"flush_seconds must be a number > 0, got {f!r}")
        for name in ("skip_existing", "relative_paths", "prune"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"{name} must be True or False, "
                                        f"got {getattr(self, name)!r}")
        if self.bulk_dir is not None and not self.skip_existing:
            raise InvalidInputError(
                "a bulk load adds new ids only; it cannot re-encode ids already present "
                "(--force): index without --bulk, or drop the collection first")
        if self.prune and self.only_ids is not None:
            raise InvalidInputError("prune deletes what a whole archive does not list; a run of "
                                    "some ids only (--retry-failed) cannot say that")

    def replace(self, **changes: Any) -> "IngestOptions":
        """A copy with some fields changed (checked again); unknown names raise
        :class:`~rsir_sdk.errors.InvalidInputError` naming them."""
        unknown = unknown_fields(self, changes)
        if unknown:
            raise InvalidInputError(f"unknown ingest option(s): {', '.join(unknown)} "
                                    f"(see rsir_sdk.IngestOptions)")
        return dataclasses.replace(self, **changes)

    def listing(self) -> dict[str, Any]:
        """The keyword arguments of :func:`rsir_sdk.archive.open_archive`."""
        return {"label_from": self.label_from, "root": self.root,
                "path_column": self.path_column, "id_column": self.id_column,
                "label_column": self.label_column, "extensions": self.extensions}

    def to_json(self) -> dict[str, Any]:
        """The options as JSON (``only_ids`` a sorted list), as ``POST /v1/index`` takes them."""
        out = dataclasses.asdict(self)
        out["extensions"] = list(self.extensions)
        out["only_ids"] = None if self.only_ids is None else sorted(self.only_ids)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | None) -> "IngestOptions":
        """Options from :meth:`to_json`'s shape; unknown keys are refused."""
        return cls().replace(**dict(obj or {}))

    @classmethod
    def build(cls, options: "IngestOptions | None", overrides: Mapping[str, Any]) -> "IngestOptions":
        """``options`` (or the defaults) with keyword ``overrides`` applied: what
        ``index(archive, options, **overrides)`` runs with."""
        if options is not None and not isinstance(options, IngestOptions):
            raise InvalidInputError(f"options must be an IngestOptions value, got "
                                    f"{type(options).__name__} (keywords go as index(..., "
                                    f"label_from='parent'))")
        base = options if options is not None else cls()
        return base.replace(**overrides) if overrides else base


def _ray_from(obj: Mapping[str, Any]) -> RayOptions:
    unknown = sorted(set(obj) - {f.name for f in dataclasses.fields(RayOptions)})
    if unknown:
        raise InvalidInputError(f"unknown Ray option(s): {', '.join(unknown)} "
                                f"(see rsir_sdk.options.RayOptions)")
    return RayOptions(**obj)
