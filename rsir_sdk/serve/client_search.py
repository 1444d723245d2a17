"""The work behind :meth:`RemoteRetriever.search_codes <rsir_sdk.serve.client.RemoteRetriever.search_codes>`.

A function of the RemoteRetriever, as :mod:`.client_writes` holds its writes: packed codes
(and their fine codes) checked here, then sent as raw bytes in requests the service can answer
in time: at most its ``max_codes`` codes and ``max_hits / k``, and sized by the pace of the
request before (:class:`~.wire.PacedParts`) to end in a quarter of its ``request_timeout``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..codes import as_packed
from ..errors import StoreError
from ..hits import Hit
from .wire import PacedParts, check_fine_given, chunks

if TYPE_CHECKING:  # pragma: no cover
    from .client import RemoteRetriever


def search_codes(r: "RemoteRetriever", codes: np.ndarray | bytes, k: int,
                 params: dict[str, Any], fine: np.ndarray | bytes | None,
                 mode: str) -> list[list[Hit]]:
    """Top-``k`` for each packed code, in order (``params``: the search's query parameters)."""
    packed = as_packed(codes, r._bits())
    fine_rows = r._fine(fine, len(packed))
    check_fine_given(fine_rows, mode, r._info or r.info())
    if fine_rows is not None:
        params = {**params, "fine": "1"}
    out: list[list[Hit]] = []
    limits = r._limits()
    parts = chunks(len(packed), 1) if len(packed) <= 1 else PacedParts(
        len(packed), codes_per_request(limits, k), float(limits.get("request_timeout") or 30.0) / 4)
    for part in parts:
        body = packed[part] if fine_rows is None else np.hstack([packed[part], fine_rows[part]])
        payload = r._request(
            "POST", "/v1/search/codes", params=params, content=body.tobytes(),
            headers={"Content-Type": "application/octet-stream", **r._encoder_header()})
        if len(payload["results"]) != len(body):
            raise StoreError(f"the service at {r.url} answered {len(payload['results'])} "
                             f"result lists for {len(body)} codes")
        out += [r._hits(rows) for rows in payload["results"]]
    return out


def codes_per_request(limits: Mapping[str, Any], k: int) -> int:
    """How many codes one search request may carry: the service's ``max_codes``, and no more
    than its ``max_hits`` (codes x k) allow (a service older than that limit: none)."""
    hits = int(limits.get("max_hits") or 0)
    step = int(limits["max_codes"])
    return max(1, min(step, hits // k)) if hits else step
