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
import os
from dataclasses import dataclass
from typing import Any, Mapping

from .archive import IMAGE_EXTENSIONS, LABEL_FROM
from .errors import InvalidInputError
from .images import DEFAULT_MAX_PIXELS

__all__ = ["ENGINES", "PREPARE", "IngestOptions"]

ENGINES = ("local", "ray")
PREPARE = ("auto", "always", "never")


@dataclass(frozen=True)
class IngestOptions:
    """How an archive is listed, which of its images are indexed, and how.

    Listing (those of :func:`rsir_sdk.archive.open_archive`): ``label_from`` (``none``,
    ``parent``, ``top``: labels from a folder archive's folders), ``root`` (a CSV manifest's
    image root), ``path_column``, ``id_column``, ``label_column`` (a manifest's columns),
    ``extensions`` (a folder's image file extensions).

    Which images: ``skip_existing`` (skip ids the collection holds: resume; ``False`` re-encodes
    them as upserts), ``only_ids`` (index only these, e.g. the ids of a failure report),
    ``relative_paths`` (store paths relative to the archive root instead of absolute ones).

    How: ``engine`` (``local`` threads, or ``ray``: the ``distributed`` extra) with ``address``
    (a Ray cluster; ``None`` starts a local Ray), ``workers`` (decoding threads or Ray actors),
    ``batch_size`` (images per encoder call), ``upsert_batch`` (rows per write),
    ``flush_seconds`` (pending rows are written after this long), ``max_pixels`` (the
    decompression-bomb guard), ``bulk_dir`` (a server: load through Milvus' bulk import staging
    files here), ``prepare`` (``auto``, ``always``, ``never``: leave the collection ready to
    search at the end).
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
    engine: str = "local"
    address: str | None = None
    workers: int | None = None
    batch_size: int | None = None
    upsert_batch: int = 512
    flush_seconds: float = 10.0
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    bulk_dir: str | None = None
    prepare: str = "auto"

    def __post_init__(self) -> None:
        fix = object.__setattr__  # frozen: normalise once, here
        if self.root is not None:
            fix(self, "root", os.fspath(self.root))
        if self.bulk_dir is not None:
            fix(self, "bulk_dir", os.fspath(self.bulk_dir))
        if isinstance(self.extensions, str):
            raise InvalidInputError("extensions must be a list of suffixes, e.g. ['.jpg', '.tif']")
        fix(self, "extensions", tuple(self.extensions))
        if self.only_ids is not None:
            if isinstance(self.only_ids, str):
                raise InvalidInputError("only_ids must be a collection of ids, not one string")
            fix(self, "only_ids", frozenset(str(i) for i in self.only_ids))
        self._check()

    def _check(self) -> None:
        if self.label_from not in LABEL_FROM:
            raise InvalidInputError(f"label_from must be one of {', '.join(LABEL_FROM)}, "
                                    f"got {self.label_from!r}")
        if self.engine not in ENGINES:
            raise InvalidInputError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        if self.prepare not in PREPARE:
            raise InvalidInputError(f"prepare must be auto, always or never, got {self.prepare!r}")
        for name in ("workers", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.upsert_batch, bool) or not isinstance(self.upsert_batch, int) \
                or self.upsert_batch < 1:
            raise InvalidInputError(f"upsert_batch must be a positive integer, "
                                    f"got {self.upsert_batch!r}")
        if self.max_pixels is not None and (not isinstance(self.max_pixels, int)
                                            or self.max_pixels < 1):
            raise InvalidInputError(f"max_pixels must be a positive integer or None, "
                                    f"got {self.max_pixels!r}")
        if self.bulk_dir is not None and not self.skip_existing:
            raise InvalidInputError(
                "a bulk load adds new ids only; it cannot re-encode ids already present "
                "(--force): index without --bulk, or drop the collection first")

    def replace(self, **changes: Any) -> "IngestOptions":
        """A copy with some fields changed (checked again); unknown names raise
        :class:`~rsir_sdk.errors.InvalidInputError` naming them."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
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
        base = options if options is not None else cls()
        return base.replace(**overrides) if overrides else base
