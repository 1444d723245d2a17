"""What an ingestion reports: its progress, its summary, and the interruption that carries it.

Why apart from :mod:`rsir_sdk.ingest`: these are the values every engine (local threads, Ray,
the HTTP service's ``POST /v1/index``) hands back to the caller, and what ``RemoteRetriever``
rebuilds from JSON; the pipeline that produces them is :mod:`rsir_sdk.ingest`, which re-exports
them.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from .failures import Failure

__all__ = ["IngestInterrupted", "IngestProgress", "IngestSummary"]


class IngestInterrupted(KeyboardInterrupt):
    """Ingestion stopped by Ctrl-C; what was encoded was written first. Re-run to resume."""

    def __init__(self, summary: "IngestSummary"):
        self.summary = summary
        super().__init__(
            f"interrupted after indexing {summary.indexed} images; re-run the same command to "
            f"resume (already indexed ids are skipped)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt from its summary (the default passed the message as the summary), so it
        # crosses a process boundary (multiprocessing, concurrent.futures) intact
        return (type(self), (self.summary,))


@dataclass
class IngestProgress:
    """Where an ingestion stands: images handled so far out of ``total`` and how."""

    total: int
    indexed: int = 0  # written to Milvus
    encoded: int = 0  # encoded, written or waiting for the next upsert
    skipped: int = 0  # already present
    failed: int = 0

    @property
    def done(self) -> int:
        """Images handled (encoded, skipped or failed)."""
        return self.encoded + self.skipped + self.failed


@dataclass
class IngestSummary:
    """What an ingestion did. ``failed`` lists every image not indexed, with its reason."""

    total: int = 0
    indexed: int = 0
    skipped: int = 0
    failed: list[Failure] = field(default_factory=list)
    ignored: int = 0
    ignored_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    report: str | None = None
    collection: str = ""
    uri: str = ""
    #: seconds of each step of prepare_for_search (None: not run)
    prepare: dict[str, Any] | None = None
    #: the bulk load's counts and timings (None: written with inserts)
    bulk: dict[str, Any] | None = None
    #: images indexed with georeferencing that gave no footprint, by reason (``footprint_error``:
    #: an unknown CRS, or one that needs pyproj): a place filter never returns them
    footprint_errors: dict[str, int] = field(default_factory=dict)
    #: images indexed with a date tag that is not a date, by reason (``time_error``): a period
    #: filter never returns them
    time_errors: dict[str, int] = field(default_factory=dict)
    #: images indexed that the collection already held under another id (the same file), and
    #: a few ``(new id, stored id)`` pairs: indexed from another folder; each is stored twice
    stored_elsewhere: int = 0
    stored_elsewhere_examples: list[tuple[str, str]] = field(default_factory=list)
    #: items the collection holds that this listing does not (files removed or renamed since
    #: they were indexed, or items written another way): searches still return them
    not_listed: int = 0
    #: items deleted because the listing does not hold them (``IngestOptions.prune``)
    pruned: int = 0

    @property
    def unplaced(self) -> int:
        """How many indexed images have georeferencing but no footprint."""
        return sum(self.footprint_errors.values())

    @property
    def ok(self) -> bool:
        """True when every listed image is in the collection."""
        return not self.failed

    @property
    def images_per_second(self) -> float:
        """Images indexed per second of wall time."""
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def reasons(self, top: int = 5) -> list[tuple[str, int]]:
        """The most common failure reasons with their counts."""
        counts = collections.Counter(f"{f.stage}: {f.reason}" for f in self.failed)
        return counts.most_common(top)

    def to_json(self) -> dict[str, Any]:
        """This summary as a JSON object (``json.dumps(summary.to_json())``), named as
        ``Hit.to_json`` and ``IngestOptions.to_json`` are; the same as :meth:`as_dict`."""
        return self.as_dict()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "total": self.total, "indexed": self.indexed, "skipped": self.skipped,
            "failed": len(self.failed), "ignored": self.ignored,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "report": self.report, "collection": self.collection, "uri": self.uri,
            "prepare": _rounded(self.prepare), "bulk": _rounded(self.bulk),
            "footprint_errors": dict(self.footprint_errors),
            "time_errors": dict(self.time_errors),
            "stored_elsewhere": self.stored_elsewhere,
            "stored_elsewhere_examples": [list(p) for p in self.stored_elsewhere_examples],
            "not_listed": self.not_listed, "pruned": self.pruned,
            "failures": [f.__dict__ for f in self.failed],
        }


def _rounded(d: dict[str, Any] | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}
