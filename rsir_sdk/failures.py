"""Failures of an ingestion run and the report file that lists them.

Every image that cannot be indexed becomes a :class:`Failure` (its id, file, the stage that
failed and why); :class:`FailureReport` writes them as they happen to a CSV file that survives a
crash, and :func:`read_report` reads one back so ``--retry-failed`` can index just those images.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArchiveError

#: the columns of the failure report
REPORT_COLUMNS = ("id", "path", "stage", "reason")


@dataclass(frozen=True)
class Failure:
    """An image that was not indexed: its id, file, the stage that failed and why."""

    id: str
    path: str
    stage: str  # "list" | "read" | "encode" | "write"
    reason: str


class FailureReport:
    """The failure report file: a CSV with ``id,path,stage,reason``, one row per failed image.

    Rows are flushed as they are written, so a report survives a crash. The file is written
    from the first failure on: until then an earlier run's report stays as it was, and
    ``close()`` removes it when nothing failed (no stale report is left behind) unless told to
    keep it (a run that listed nothing, or was cut short, says nothing about those images).

    >>> with FailureReport("failed.csv") as rep:                # doctest: +SKIP
    ...     rep.add(Failure("a.jpg", "/data/a.jpg", "read", "the file is empty (0 bytes)"))
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.count = 0
        self._fh: Any = None
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveError(f"cannot write the failure report {self.path}: {exc}") from None
        target = self.path if self.path.exists() else self.path.parent
        if self.path.is_dir() or not os.access(target, os.W_OK):
            raise ArchiveError(f"cannot write the failure report {self.path}: "
                               f"{'a folder' if self.path.is_dir() else 'permission denied'}")

    def add(self, failure: Failure) -> None:
        """Append one failure (and flush); the first one starts the file."""
        if self._fh is None:
            try:
                # a file name that is not UTF-8 is written with its bytes escaped (\\xff)
                self._fh = open(self.path, "w", newline="", encoding="utf-8",
                                errors="backslashreplace")
            except OSError as exc:
                raise ArchiveError(f"cannot write the failure report {self.path}: {exc}") from None
            self._writer = csv.writer(self._fh)
            self._writer.writerow(REPORT_COLUMNS)
        self._writer.writerow([failure.id, failure.path, failure.stage, failure.reason])
        self._fh.flush()
        self.count += 1

    def close(self, keep_earlier: bool = False) -> None:
        """Close the file; when nothing failed, delete an earlier run's report, unless
        ``keep_earlier``."""
        if self._closed:
            return
        self._closed = True
        if self._fh is not None:
            self._fh.close()
        elif not keep_earlier:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FailureReport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def as_reported(text: str) -> str:
    """``text`` as a report writes it: the undecodable bytes of a file name that is not UTF-8
    (surrogate escapes) as ``\\udcff``, any other text unchanged. Ids read back from a report
    match the archive's ids in this form (``rsir index --retry-failed``).

    >>> as_reported("a.jpg"), as_reported(b"bad\\xff.jpg".decode("utf-8", "surrogateescape"))
    ('a.jpg', 'bad\\\\udcff.jpg')
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def read_report(path: str | os.PathLike) -> list[Failure]:
    """Read a failure report written by :class:`FailureReport`."""
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"failure report {path} does not exist (nothing failed last time?)")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "id" not in reader.fieldnames:
                raise ArchiveError(f"{path} is not a failure report (no 'id' column)")
            return [Failure(r["id"], r.get("path") or "", r.get("stage") or "",
                            r.get("reason") or "") for r in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ArchiveError(f"{path} is not a failure report (not UTF-8 CSV: {exc})") from None
