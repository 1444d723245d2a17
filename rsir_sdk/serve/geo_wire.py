"""Place and period over HTTP (issue 22): how ``bbox``, ``near``, ``time``, ``footprints`` and
``times`` travel between :class:`~rsir_sdk.serve.client.RemoteRetriever` and ``rsir serve``.

Both sides parse with :mod:`rsir_sdk.geo` (the functions the local Retriever uses), so a bad value
is the same one-line :class:`~rsir_sdk.errors.InvalidInputError` before a request is sent and
(for other clients) a 422 from the service.

- Search constraints: in the query string or a form field as text, either the short forms
  (``bbox=W,S,E,N``, ``near=LON,LAT,METRES``, ``time=START/END`` in ISO 8601, ``..`` or an empty
  side open) or a JSON array (``bbox=[W,S,E,N]``, ``time=["2021-06-01",null]``); in a JSON body
  as the same strings or arrays. The client sends JSON arrays of the values it parsed (floats:
  epoch seconds for times), so what the service filters by is exactly what was asked locally,
  to the last bit.
- Item columns: ``footprints`` is a JSON array with, per item, ``null``, ``[W,S,E,N]`` (a box),
  ``[LON,LAT]`` (a point) or ``{"box": [W,S,E,N], "centre": [LON,LAT], "time": T}`` (a
  :class:`~rsir_sdk.geo.Footprint` whole); ``times`` per item ``null``, an ISO 8601 string or
  epoch seconds.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..geo import Footprint, GeoFilter, parse_time
from ..store.place import footprint_arg

#: the search constraints, in the order the Python API names them
GEO_KEYS = ("bbox", "near", "time")

__all__ = ["GEO_KEYS", "footprints_from_wire", "footprints_to_wire", "geo_from_wire",
           "geo_kwargs", "geo_to_wire", "times_from_wire", "times_to_wire"]


def geo_to_wire(bbox: Any = None, near: Any = None, time: Any = None) -> dict[str, list[Any]]:
    """The client side: parse the three constraints (one line when bad) and give them as JSON
    arrays of floats (``None`` for an open end); constraints not given are left out."""
    where = GeoFilter.of(bbox, near, time)
    out: dict[str, list[Any]] = {}
    if where.bbox is not None:
        b = where.bbox
        out["bbox"] = [b.west, b.south, b.east, b.north]
    if where.near is not None:
        out["near"] = [where.near.lon, where.near.lat, where.near.metres]
    if where.time is not None:
        out["time"] = [where.time.start, where.time.end]
    return out


def geo_from_wire(values: Mapping[str, Any]) -> GeoFilter:
    """The service side: a :class:`~rsir_sdk.geo.GeoFilter` from request values (query text,
    form text or JSON); ``None`` and empty strings constrain nothing; one line when bad."""
    parsed = {}
    for key in GEO_KEYS:
        value = values.get(key)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = _json_array(text, key)
            elif not text:
                value = None
        parsed[key] = value
    return GeoFilter.of(**parsed)


def geo_kwargs(where: GeoFilter | None) -> dict[str, Any]:
    """``bbox=``, ``near=``, ``time=`` keywords for a Retriever call (only those constrained,
    so a search without them calls the Retriever exactly as before)."""
    if where is None:
        return {}
    return {k: getattr(where, k) for k in GEO_KEYS if getattr(where, k) is not None}


def _json_array(text: str, name: str) -> list[Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidInputError(f"{name} {text[:60]!r} is not a JSON array") from None
    if not isinstance(value, list):
        raise InvalidInputError(f"{name} must be a JSON array, got {text[:60]!r}")
    return value


def footprint_of(value: Any, where: str) -> Footprint | None:
    """One item's footprint: what :func:`rsir_sdk.store.place.footprint_arg` takes (``None``, a
    :class:`Footprint`, ``(W, S, E, N)``, ``(LON, LAT)``), or the wire's ``{"box", "centre",
    "time"}``; one line naming ``where`` (``id 'x'``, as the local Retriever says) otherwise."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, Mapping):
        return footprint_arg(value, where)
    try:
        unknown = sorted(set(value) - {"box", "centre", "time"})
        if unknown or "box" not in value:
            raise InvalidInputError(f"an object needs 'box' (and may have 'centre', 'time'), "
                                    f"got keys {sorted(value)}")
        t = value.get("time")
        fp = Footprint.of_box(value["box"], None if t is None else parse_time(t, "time"))
        centre = value.get("centre")
        return fp if centre is None else Footprint(fp.box, tuple(centre), fp.time)
    except (InvalidInputError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"footprint of {where}: {exc}") from None


def _where(item_id: str) -> str:
    return f"id {item_id!r:.80}"


def footprints_to_wire(footprints: Sequence[Any] | None, ids: Sequence[str]) -> list[Any] | None:
    """The client side: ``footprints`` checked (one per item) and as JSON values."""
    if footprints is None:
        return None
    out: list[Any] = []
    for item_id, value in zip(ids, _column(footprints, len(ids), "footprints")):
        fp = footprint_of(value, _where(item_id))
        if fp is None:
            out.append(None)
            continue
        b = fp.box
        out.append({"box": [b.west, b.south, b.east, b.north], "centre": list(fp.centre),
                    "time": fp.time})
    return out


def footprints_from_wire(values: Any, ids: Sequence[str]) -> list[Footprint | None] | None:
    """The service side: the ``footprints`` column as footprints (one per item)."""
    if values is None:
        return None
    return [footprint_of(v, _where(i)) for i, v in zip(ids, _column(values, len(ids), "footprints"))]


def times_to_wire(times: Sequence[Any] | None, ids: Sequence[str]) -> list[float | None] | None:
    """Both sides: the ``times`` column as UTC epoch seconds (``None`` where not known)."""
    if times is None:
        return None
    return [None if t is None else parse_time(t, f"time of {_where(i)}")
            for i, t in zip(ids, _column(times, len(ids), "times"))]


times_from_wire = times_to_wire


def _column(values: Any, n: int, name: str) -> list[Any]:
    if isinstance(values, np.ndarray):
        values = list(values)
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        raise InvalidInputError(f"{name} must be a list with one value per item, got "
                                f"{str(values)[:80]!r}")
    if len(values) != n:
        raise InvalidInputError(f"{n} items but {len(values)} {name}")
    return list(values)
