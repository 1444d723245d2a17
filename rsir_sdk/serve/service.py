"""``Service``: the one object behind the routes: a Retriever, its limits, auth and metrics.

Each public method here is blocking (onnxruntime, pymilvus, URL downloads) and is meant to run
inside :class:`~rsir_sdk.serve.limits.WorkGate` (``await service.gate.run(service.search_images,
...)``); the routes stay thin. Only public objects of the runtime are used: the
:class:`~rsir_sdk.Retriever`'s verbs, its ``bundle``, and its ``store``'s ``get``/``count``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import __version__
from ..api import Filter
from ..call_checks import radius_bound
from ..errors import CollectionMismatchError, InvalidInputError
from ..geo import Footprint, GeoFilter
from ..hits import Hit, StoredItem
from ..retriever import Retriever
from .auth import TokenAuth
from .config import ServeConfig
from .errors import ForbiddenError, NotFoundError
from .geo_wire import geo_kwargs
from .inputs import ImageInput, load_source
from .limits import WorkGate
from .metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemColumns:
    """The per-item columns of a write (each ``None`` when not sent), checked by the route."""

    labels: list | None = None
    paths: list | None = None
    metadata: list | None = None
    footprints: list[Footprint | None] | None = None
    times: list[float | None] | None = None

    def geo(self) -> dict[str, Any]:
        """``footprints=``/``times=`` keywords for the Retriever (only those sent)."""
        return {k: v for k, v in (("footprints", self.footprints), ("times", self.times))
                if v is not None}

#: request header an edge client names its encoder in (``Bundle.encoder_id``)
ENCODER_HEADER = "x-rsir-encoder-id"
#: ingest options a client may not choose over HTTP (how and where the service runs its work)
SERVICE_DECIDES = ("engine", "address", "bulk_dir", "ray", "prune")


class Service:
    """A Retriever served over HTTP: the state the routes share.

    ``owns_retriever``: close the Retriever when the service shuts down (the command line's
    case; a caller that passes its own Retriever may keep it).
    """

    def __init__(self, retriever: Retriever, config: ServeConfig | None = None,
                 owns_retriever: bool = True):
        self.retriever = retriever
        self.config = config or ServeConfig()
        self.owns_retriever = owns_retriever
        self.auth = TokenAuth(self.config.read_token, self.config.write_token)
        self.gate = WorkGate(self.config.concurrency, self.config.max_queue,
                             self.config.request_timeout, self.config.retry_after)
        self.metrics = Metrics()
        self.bundle = retriever.bundle
        self.bits = int(retriever.bundle.bits)
        #: the served bundle's fine-code length (None: it has none): edge clients send fine
        #: codes of this length beside their codes (issue 20)
        self.fine_bits: int | None = getattr(retriever.bundle, "fine_bits", None)
        self.collection = str(retriever.store.collection)
        self.archive_root = self.config.archive_root or _recorded_root(retriever)
        self.shutting_down = False
        self.closed = False
        #: when the server was told to stop (``time.monotonic()``; None: not yet, or not known)
        self.stop_asked_at: float | None = None
        #: items were written or deleted since the store was last flushed (see :meth:`close`)
        self.unflushed = False

    # ------------------------------------------------------------ identity checks
    def collection_encoder_id(self) -> str:
        """The encoder id the collection records (else the served bundle's)."""
        recorded = self.retriever.store.encoder or {}
        return str(recorded.get("encoder_id") or self.bundle.encoder_id)

    def check_client_encoder(self, encoder_id: str | None) -> None:
        """Refuse codes an edge client says come from another encoder (409)."""
        if encoder_id and encoder_id.strip().lower() != self.collection_encoder_id().lower():
            raise CollectionMismatchError(
                f"collection {self.collection!r} was filled by encoder "
                f"{self.collection_encoder_id()}; these codes come from encoder "
                f"{encoder_id.strip()[:40]}. Codes of different encoders are not comparable: "
                f"use the bundle the service runs (GET /v1/info) or another collection")

    def radius_bound(self, mode: str) -> tuple[int, str]:
        """The largest radius of a search in ``mode`` and the code it bounds (the length of
        the code it ranks by), as ``Retriever`` reads it
        (:func:`rsir_sdk.call_checks.radius_bound`)."""
        return radius_bound(mode, self.bits, self.fine_bits)

    def default_duplicate_radius(self) -> int:
        """The radius ``duplicates(None)`` uses: :data:`rsir_sdk.store.DEFAULT_DUPLICATE_RADIUS`
        scaled to the collection's fine-code length (the store's rule)."""
        from ..store.dupes import default_radius

        kept = getattr(self.retriever.store, "fine_bits", None) or self.fine_bits or 128
        return default_radius(int(kept))

    def fine_width(self) -> int:
        """The fine-code length to read a request's fine codes with; a one-line
        InvalidInputError (422) when the served bundle has no fine code."""
        if self.fine_bits is None:
            raise InvalidInputError(
                f"this service's bundle ({self.bundle.method}, encoder {self.bundle.encoder_id}) "
                f"has no fine code: send the retrieval codes alone")
        return int(self.fine_bits)

    # ------------------------------------------------------------ blocking work
    def _sources(self, images: Sequence[ImageInput]) -> list[Any]:
        # pixel limit from the header, large images decoded reduced: inputs.load_source
        return [load_source(img, self.config, self.bundle.preprocess) for img in images]

    def search_images(self, images: Sequence[ImageInput], k: int, filter: Filter,
                      radius: int | None, where: GeoFilter | None = None,
                      mode: str = "default") -> list[list[Hit]]:
        """Encode and search each image (downloading URLs first); ``where``: place and period;
        ``mode``: :data:`rsir_sdk.hits.SEARCH_MODES`."""
        sources = self._sources(images)
        kw = {**geo_kwargs(where), **_mode(mode)}
        if len(sources) == 1:
            return [self.retriever.search(sources[0], k=k, filter=filter, radius=radius, **kw)]
        return self.retriever.search_batch(sources, k=k, filter=filter, radius=radius, **kw)

    def search_codes(self, codes: np.ndarray, k: int, filter: Filter, radius: int | None,
                     where: GeoFilter | None = None, fine: np.ndarray | None = None,
                     mode: str = "default") -> list[list[Hit]]:
        """Search packed codes as they are (with their fine codes when sent); ``where``:
        place and period."""
        kw = {**geo_kwargs(where), **_mode(mode)}
        if fine is not None:
            kw["fine"] = fine
        return self.retriever.search_codes(codes, k=k, filter=filter, radius=radius, **kw)

    def duplicates(self, radius: int | None, filter: Filter,
                   where: GeoFilter | None = None) -> list[list[str]]:
        """Groups of near-identical items (fine codes within ``radius``; None: the default)."""
        return self.retriever.duplicates(radius, filter or None, **geo_kwargs(where))

    def add_images(self, images: Sequence[ImageInput], ids: list[str], columns: ItemColumns,
                   ) -> tuple[int, int | None]:
        """Encode and upsert images; returns ``(written, count afterwards)``."""
        sources = self._sources(images)
        paths = columns.paths if columns.paths is not None else [""] * len(sources)
        n = self.retriever.add_images(sources, ids=ids, labels=columns.labels,
                                      metadata=columns.metadata, paths=paths, **columns.geo())
        self.unflushed = True
        return n, self.refresh_count()

    def add_codes(self, codes: np.ndarray, ids: list[str], columns: ItemColumns,
                  fine: np.ndarray | None = None) -> tuple[int, int | None]:
        """Upsert packed codes (with their fine codes when sent); returns ``(written, count
        afterwards)``."""
        kw = columns.geo()
        if fine is not None:
            kw["fine"] = fine
        n = self.retriever.add_codes(codes, ids, labels=columns.labels, paths=columns.paths,
                                     metadata=columns.metadata, **kw)
        self.unflushed = True
        return n, self.refresh_count()

    def delete(self, ids: Sequence[str]) -> tuple[int, int | None]:
        """Delete by id; returns ``(how many existed, count afterwards)``."""
        n = self.retriever.delete(list(ids))
        self.unflushed = True
        return n, self.refresh_count()

    def get(self, ids: Sequence[str]) -> list[StoredItem]:
        """Stored items by id (missing ids left out), in the order asked."""
        return list(self.retriever.get(list(ids)))

    def count(self, filter: Filter = None, where: GeoFilter | None = None) -> int:
        """Items in the collection (matching ``filter`` and the place and period ``where``)."""
        return int(self.retriever.count(filter or None, **geo_kwargs(where)))

    def refresh_count(self) -> int | None:
        """Count the items and remember the figure for ``/metrics`` (None if the store fails)."""
        try:
            n = self.count()
        except Exception as exc:  # a metrics refresh must not fail the write it follows
            log.warning("cannot count items: %s", exc.__class__.__name__)
            return None
        self.metrics.set_items(n)
        return n

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/info`` answers: the Retriever's :meth:`~rsir_sdk.Retriever.info`
        but its ``uri`` (the store's address stays on the server), the served archive root,
        and the service's own facts (encoder identity, classes, auth, limits, version)."""
        c = self.config
        local = self.retriever.info()
        local.pop("uri", None)
        local.setdefault("fine_bits", self.fine_bits)
        local.setdefault("collection_fine_bits", getattr(self.retriever.store, "fine_bits", None))
        return {
            **local,
            "collection": self.collection,
            "encoder": self.retriever.store.encoder,
            "classes": list(self.bundle.classes),
            "archive_root": str(self.archive_root) if self.archive_root else None,
            "auth": self.auth.enabled,
            "limits": {"max_k": c.max_k, "max_batch": c.max_batch, "max_codes": c.max_codes,
                       "max_hits": c.max_hits,
                       "max_upload_bytes": c.max_upload_bytes, "max_pixels": c.max_pixels,
                       "request_timeout": c.request_timeout, "urls": c.allow_urls,
                       "expressions": c.allow_expressions, "index": c.allow_index},
            "version": __version__,
        }

    # ------------------------------------------------------------ collection work
    def add_learned_codes(self) -> tuple[int, int | None]:
        """Put the served bundle's learned database codes in; ``(written, count afterwards)``."""
        n = self.retriever.add_learned_codes()
        self.unflushed = True
        return n, self.refresh_count()

    def prepare_for_search(self, timeout: float | None) -> dict[str, Any]:
        """Leave the collection ready to search at full speed; the seconds of each step."""
        return dict(self.retriever.prepare_for_search(timeout=timeout))

    def index(self, archive: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Index an archive inside the archive root (``POST /v1/index``); the summary as JSON.

        Refused (403) unless the service runs with ``--allow-index`` and an archive root;
        paths resolving outside the root (``..``, links) are the same 404 as missing ones;
        ``engine``, ``address``, ``bulk_dir``, ``ray`` and ``prune`` are the service's to decide (422).
        """
        from ..options import IngestOptions

        if not self.config.allow_index or self.archive_root is None:
            raise ForbiddenError("this service does not index archives (start it with "
                                 "--allow-index and --archive-root)", 403, "ForbiddenError")
        opts = IngestOptions.from_json(options)
        default = IngestOptions()
        decided = [name for name in SERVICE_DECIDES
                   if getattr(opts, name, None) != getattr(default, name, None)]
        if decided:
            raise InvalidInputError(f"{', '.join(decided)}: decided by the service, not by a "
                                    f"client (index with a local Retriever instead)")
        opts = self._pixel_limited(opts, default.max_pixels)
        root = None if opts.root is None else str(self._inside_root(opts.root, "a folder"))
        opts = opts.replace(root=root)
        listing = self._listing(self._inside_root(archive, "an archive (folder or CSV manifest)"),
                                opts)
        summary = self.retriever.index(listing, opts)
        self.refresh_count()
        out = summary.as_dict()
        out.pop("uri", None)
        out["ignored_examples"] = list(summary.ignored_examples)
        return out

    def _pixel_limited(self, opts: Any, library_default: int | None) -> Any:
        """``opts`` held to the service's ``--max-pixels``, the one image-size limit of this
        process (uploads and archives alike): the library's default (what a client sends when
        it says nothing) becomes that limit; a higher or no limit is refused."""
        limit = self.config.max_pixels
        if opts.max_pixels == library_default:
            return opts.replace(max_pixels=limit)
        if opts.max_pixels is None or opts.max_pixels > limit:
            raise InvalidInputError(f"max_pixels: at most {limit} on this service (rsir serve "
                                    f"--max-pixels; the decompression-bomb guard stays on)")
        return opts

    def _listing(self, real: Path, opts: Any) -> Any:
        """The archive's listing, refused (422) when a manifest names images outside the root
        (missing or present alike: the answer says nothing about files out there)."""
        from ..archive import open_archive

        listing = open_archive(str(real), **opts.listing())
        root = str(self.archive_root)
        outside = [it.path for it in listing.items
                   if os.path.commonpath([root, os.path.realpath(it.file)]) != root]
        if outside:
            raise InvalidInputError(f"{len(outside)} image(s) of {real.name} lie outside the "
                                    f"served archive root, e.g. {outside[0][:200]!r}: a service "
                                    f"indexes files inside its root only")
        return listing

    def _inside_root(self, path: str, what: str) -> Path:
        """``path`` (relative to the archive root, or absolute inside it) resolved; one 404
        for missing and outside alike."""
        assert self.archive_root is not None
        root = Path(self.archive_root)
        missing = NotFoundError(f"no such archive inside the served archive root: give {what} "
                                f"relative to it", 404, "NotFoundError")
        if not isinstance(path, str) or not path or "\x00" in path or len(path) > 4096:
            raise missing
        candidate = Path(path) if os.path.isabs(path) else root / path
        try:
            real = candidate.resolve(strict=True)
            real.relative_to(root)
        except (OSError, RuntimeError, ValueError):
            raise missing from None
        return real

    def close(self, timeout: float) -> None:
        """Stop taking work, let running calls end (up to ``timeout`` s from the stop signal,
        when :attr:`stop_asked_at` says when it came: a search past its time limit held the
        exit for the HTTP server's wait and this one, 50 s for a 35 s grace), close the
        Retriever; once (a forced exit calls it again)."""
        if self.closed:
            return
        self.closed = True
        self.shutting_down = True
        t0 = time.monotonic()
        if self.stop_asked_at is not None:  # the grace counts from the signal: the HTTP server
            timeout = max(0.0, timeout - (t0 - self.stop_asked_at))  # had waited out its part
        if not self.gate.close(timeout):
            log.warning("%d call(s) still running after %.0f s (at most %.0f s are waited, "
                        "none after a forced exit); closing the store anyway",
                        self.gate.running, time.monotonic() - t0, timeout)
        if self.unflushed:  # a Milvus server lost unflushed rows when it restarted
            try:
                self.retriever.store.flush()
            except Exception as exc:  # the store may be gone: stopping must not fail on it
                log.warning("could not flush collection %s before stopping: %s",
                            self.collection, exc)
        if self.owns_retriever:
            self.retriever.close()
            log.info("closed collection %s", self.collection)


def _mode(mode: str) -> dict[str, str]:
    """``mode=`` for the Retriever, left out for the default mode (the call as before)."""
    return {} if mode == "default" else {"mode": mode}


def _recorded_root(retriever: Retriever) -> Path | None:
    """The archive root the bundle records, when it exists here."""
    root = retriever.bundle.archive_root
    if root and Path(root).is_dir():
        return Path(root).resolve()
    return None
