"""What :class:`~rsir_sdk.serve.client.RemoteRetriever` puts on the wire and reads back from it.

Small conversions between the client's arguments and the JSON/multipart shapes of
``rsir serve``, kept apart from the verbs so that each verb reads as what it asks:

- :func:`wire_filter`: a filter checked as the local store checks it, in its JSON form;
- :func:`check_columns`: labels, paths and metadata refused before any image is read;
- :func:`image_file`: an image source as an upload part (files and bytes as they are, pixels
  as lossless PNG);
- :func:`summary_from_json`, :func:`finish_index`: the answer of ``POST /v1/index`` as an
  :class:`~rsir_sdk.ingest.IngestSummary`, and the local failure report and progress it implies.

Place and period travel by :mod:`rsir_sdk.serve.geo_wire`; the requests themselves by
:mod:`rsir_sdk.serve.transport`.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..api import Filter as Filter  # re-exported: it was defined here
from ..store import keys as store_keys
from ..store import values as store_values
from .errors import ServiceError

if TYPE_CHECKING:
    from ..ingest import IngestProgress, IngestSummary

__all__ = ["Filter", "check_columns", "finish_index", "image_file", "summary_from_json",
           "wire_filter"]


def wire_filter(filter: Filter) -> dict[str, Any] | str | None:
    """A filter checked as the local store checks it (:func:`build_filter`), in its JSON form
    (``None`` when it filters nothing)."""
    expr = store_keys.build_filter(filter)
    if not expr:
        return None
    if isinstance(filter, str):
        return expr
    assert filter is not None
    return {key: list(v) if isinstance(v, (list, tuple, set, frozenset)) else v
            for key, v in filter.items()}


def check_columns(ids: list[str], labels: Any, paths: Any, metadata: Any) -> None:
    """Refuse bad labels, paths or metadata before any image is read or request sent."""
    store_values.labels(labels, len(ids))
    store_values.paths(paths, len(ids))
    store_values.metadata(metadata, ids)


def summary_from_json(obj: Mapping[str, Any], url: str) -> IngestSummary:
    """The :class:`~rsir_sdk.ingest.IngestSummary` that ``POST /v1/index`` answered."""
    from ..failures import Failure
    from ..ingest import IngestSummary

    try:
        return IngestSummary(
            total=int(obj["total"]), indexed=int(obj["indexed"]), skipped=int(obj["skipped"]),
            failed=[Failure(**f) for f in obj.get("failures") or []],
            ignored=int(obj.get("ignored") or 0),
            ignored_examples=list(obj.get("ignored_examples") or []),
            seconds=float(obj.get("seconds") or 0.0), collection=str(obj.get("collection", "")),
            uri=url, prepare=obj.get("prepare"), bulk=obj.get("bulk"),
            footprint_errors={str(k): int(v)
                              for k, v in (obj.get("footprint_errors") or {}).items()},
            stored_elsewhere=int(obj.get("stored_elsewhere") or 0),
            stored_elsewhere_examples=[(str(a), str(b)) for a, b in
                                       obj.get("stored_elsewhere_examples") or []])
    except (KeyError, TypeError, ValueError) as exc:
        raise ServiceError(f"the service's index answer is not a summary ({exc})", 502,
                           "ServiceError") from None


def finish_index(summary: IngestSummary, report: Any,
                 progress: Callable[[IngestProgress], None] | None) -> None:
    """Write the local failure report and the final progress of a remote ingestion."""
    from ..failures import FailureReport
    from ..ingest import IngestProgress

    if report is not None:
        own = not isinstance(report, FailureReport)
        rep = FailureReport(report) if own else report
        for failure in summary.failed:
            rep.add(failure)
        if own:
            rep.close(keep_earlier=summary.total == 0)
            summary.report = str(rep.path) if summary.failed else None
    if progress is not None:
        progress(IngestProgress(total=summary.total, indexed=summary.indexed,
                                encoded=summary.indexed, skipped=summary.skipped,
                                failed=len(summary.failed)))


def image_file(img: Any) -> tuple[str, bytes, str]:
    """``(name, bytes, content type)`` of an image source, for an upload.

    Paths and bytes travel as they are (the service decodes them exactly as a local Retriever
    would); PIL images and arrays are sent as lossless PNG.
    """
    if isinstance(img, (str, os.PathLike)):
        from ..errors import ImageLoadError

        if not os.path.isfile(img):
            raise ImageLoadError(str(img), "no such file" if not os.path.exists(img) else "not a file")
        with open(img, "rb") as fh:
            return os.path.basename(str(img)), fh.read(), "application/octet-stream"
    if isinstance(img, (bytes, bytearray, memoryview)):
        return "image", bytes(img), "application/octet-stream"
    if hasattr(img, "read"):
        data = img.read()
        return os.path.basename(str(getattr(img, "name", "image"))), data, \
            "application/octet-stream"
    from PIL import Image

    from ..images import load_image

    buf = io.BytesIO()
    Image.fromarray(load_image(img)).save(buf, format="PNG")  # the pixels a Retriever would use
    return "image.png", buf.getvalue(), "image/png"
