"""Place and period in the store: the rows' place fields, and searches and counts filtered by them.

Why a module of its own: a collection of format 3 holds the typed scalar fields of
:data:`rsir_sdk.geo.FIELDS` (a footprint's lon/lat box, its centre, its time), so that a box or a
period is a range comparison the engine evaluates (:meth:`rsir_sdk.geo.GeoFilter.expr`). Where
the engine's comparison is only a prefilter (``near``: a lon/lat box enclosing the circle) the
exact great-circle test runs here, on the rows the engine returns, and the search goes deeper
until ``k`` items pass or none are left, keeping the store's exact order (distance, then the
digest of the id; :mod:`.topk`).

Where a row's place comes from, in order: the write's explicit ``footprints``/``times`` (checked:
one line naming the item), else its metadata as :func:`rsir_sdk.georef.georeference` and the
manifest lister write it (``lonlat_bounds``, ``lonlat``, ``time``; read leniently: a value that
does not parse is left as metadata only, and one warning per write says so), else the sentinels
of "no place" and "no time".
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import CollectionMismatchError, InvalidInputError
from ..geo import (
    FIELDS,
    NO_PLACE,
    NO_TIME,
    BBox,
    Footprint,
    GeoFilter,
    footprint_of_row,
    iso,
    parse_time,
    scalar_fields,
)
from . import keys, topk
from .schema import MAX_TOPK, rebuild_steps

__all__ = ["FIELDS", "as_filter", "columns", "footprint_arg", "hit_place", "near_topk"]

log = logging.getLogger(__name__)

#: the sentinel test of a row without a footprint (``lat_min`` holds -1000)
NO_FOOTPRINT_EXPR = "lat_min < -90.0"
#: the sentinel test of a row without a time (``t`` holds NO_TIME)
NO_TIME_EXPR = f"t < {NO_TIME / 10:.1e}"


def as_filter(geo: GeoFilter | None) -> GeoFilter | None:
    """``geo`` when it constrains anything, else ``None``."""
    if geo is None:
        return None
    if not isinstance(geo, GeoFilter):
        raise InvalidInputError(f"geo must be a GeoFilter, got {type(geo).__name__}")
    return geo if geo.active else None


def refuse_old(collection: str, where: str, what: str) -> CollectionMismatchError:
    """The one-line refusal of place/period filters or footprints on a format-2 collection."""
    return CollectionMismatchError(
        f"collection {collection!r} at {where} was made before place and period fields existed, "
        f"so it cannot {what}; to rebuild it, " + rebuild_steps(collection, where))


def footprint_arg(value: Any, where: str) -> Footprint | None:
    """One item's footprint as a caller gives it: ``None``, a :class:`~rsir_sdk.geo.Footprint`,
    a :class:`~rsir_sdk.geo.BBox`, a ``(west, south, east, north)`` box or a ``(lon, lat)``
    point; one line naming ``where`` if it is none of these."""
    if value is None or isinstance(value, Footprint):
        return value
    try:
        if isinstance(value, BBox):
            return Footprint.of_box(value)
        if isinstance(value, str) or not hasattr(value, "__len__"):
            raise InvalidInputError(f"must be (west, south, east, north) or (lon, lat), got {value!r:.80}")
        if len(value) == 2:
            return Footprint.of_point(*value)
        if len(value) == 4:
            return Footprint.of_box(tuple(value))
        raise InvalidInputError(f"must be (west, south, east, north) or (lon, lat); got "
                                f"{len(value)} numbers (half a box?)")
    except InvalidInputError as exc:
        raise InvalidInputError(f"footprint of {where}: {exc}") from None
    except TypeError:
        raise InvalidInputError(f"footprint of {where}: must be (west, south, east, north) or "
                                f"(lon, lat), got {value!r:.80}") from None


#: metadata keys a row's place and time are read from (:func:`_of_metadata`)
PLACE_KEYS = ("lonlat_bounds", "lonlat", "time")


def _of_metadata(meta: Mapping[str, Any] | None, want_place: bool = True, want_time: bool = True
                 ) -> tuple[Footprint | None, float | None, str | None]:
    """A row's place and time (those wanted: the write's own win) from its metadata
    (georeferencing, a manifest's columns, the caller's own keys), leniently: ``(footprint,
    time, problem)``, ``problem`` saying what did not parse. ``lonlat`` alone is a point (it
    was ignored without ``lonlat_bounds``), and ``time`` may be epoch seconds as in ``times=``
    (it had to be text)."""
    if not meta:
        return None, None, None
    problems = []
    time = None
    if want_time and meta.get("time") is not None:
        try:
            time = parse_time(meta["time"], "time")
        except InvalidInputError as exc:
            problems.append(str(exc))
    fp = None
    try:
        if want_place and meta.get("lonlat_bounds") is not None:
            fp = Footprint.of_metadata({k: meta[k] for k in ("lonlat_bounds", "lonlat") if k in meta})
        elif want_place and meta.get("lonlat") is not None:  # a list or tuple (text refused)
            fp = footprint_arg(meta["lonlat"], "lonlat")
    except (InvalidInputError, TypeError, ValueError) as exc:
        problems.append(f"{'lonlat_bounds' if 'lonlat_bounds' in meta else 'lonlat'}: {exc}")
    return fp, time, "; ".join(problems) or None


def _sequence(value: Any, n: int, name: str) -> list[Any]:
    if value is None:
        return [None] * n
    if isinstance(value, (str, bytes, Mapping)):
        raise InvalidInputError(f"{name} must be a list with one value per item, got {value!r:.80}")
    out = list(value)
    if len(out) != n:
        raise InvalidInputError(f"{n} items but {len(out)} {name}")
    return out


def columns(ids: Sequence[str], metadata: Sequence[Mapping[str, Any] | None],
            footprints: Any = None, times: Any = None) -> np.ndarray:
    """The place fields of a write's rows, ``float64 (n, 7)`` in :data:`FIELDS` order.

    ``footprints``/``times`` (one value per item, or ``None``) win over the metadata; a bad one
    raises :class:`~rsir_sdk.errors.InvalidInputError` naming the item, before anything is
    written.
    """
    n = len(ids)
    fps = _sequence(footprints, n, "footprints")
    ts = _sequence(times, n, "times")
    if footprints is not None or times is not None:
        fast = _vectorised(fps, ts, metadata)
        if fast is not None:
            return fast
    none = scalar_fields(None, None)
    unread: list[str] = []
    out = np.tile(np.array([none[f] for f in FIELDS], dtype=np.float64), (n, 1))
    for i in range(n):
        meta = metadata[i]
        if fps[i] is None and ts[i] is None and not (meta and any(k in meta for k in PLACE_KEYS)):
            continue  # no place, no time: the sentinels (the common case, kept cheap)
        where = f"id {ids[i]!r:.80}"
        fp = footprint_arg(fps[i], where)
        t = None if ts[i] is None else parse_time(ts[i], f"time of {where}")
        if t is None and fp is not None:
            t = fp.time
        if fp is None or t is None:  # what the write does not say, the metadata may
            mfp, mt, problem = _of_metadata(metadata[i], want_place=fp is None,
                                            want_time=t is None)
            fp = mfp if fp is None else fp
            t = (fp.time if fp is not None and fp.time is not None else mt) if t is None else t
            if problem:
                unread.append(f"{where}: {problem}")
        row = scalar_fields(fp, t)
        out[i] = [row[f] for f in FIELDS]
    if unread:  # kept as metadata, as documented; but said: the items miss every place search
        log.warning("%d of %d items written without the place or time in their metadata, which "
                    "does not parse (%s%s)", len(unread), n, unread[0],
                    f"; and {len(unread) - 1} more" if len(unread) > 1 else "")
    return out


def _vectorised(fps: list[Any], ts: list[Any],
                metadata: Sequence[Mapping[str, Any] | None]) -> np.ndarray | None:
    """:func:`columns` at numpy speed for the common explicit form (``None``, ``(w, s, e, n)``
    or ``(lon, lat)`` of plain numbers; times ``None`` or epoch seconds), the same values as
    :func:`rsir_sdk.geo.scalar_fields`; ``None`` for anything else, or anything bad, which the
    per-item path then handles (and names)."""
    n = len(fps)
    box = np.zeros((n, 4))
    point, has, timed = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    t = np.full(n, NO_TIME)
    try:
        for i, (f, x) in enumerate(zip(fps, ts)):
            meta = metadata[i]
            if (f is None or x is None) and meta and any(k in meta for k in PLACE_KEYS):
                return None  # the metadata may say more: per item
            if f is not None:
                if type(f) not in (tuple, list) or len(f) not in (2, 4) or any(
                        isinstance(v, bool) or not isinstance(v, (int, float)) for v in f):
                    return None
                box[i] = (f[0], f[1], f[0], f[1]) if len(f) == 2 else f
                point[i], has[i] = len(f) == 2, True
            if x is not None:
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    return None
                t[i], timed[i] = x, True
    except (TypeError, ValueError):
        return None
    w, s, e, nn = box.T
    if not (np.isfinite(box).all() and np.isfinite(t[timed]).all() and (np.abs(w) <= 180).all()
            and (np.abs(e) <= 180).all() and (np.abs(s) <= 90).all() and (np.abs(nn) <= 90).all()
            and (s <= nn).all()):
        return None
    lo = np.where(w == 180.0, -180.0, w)
    hi = np.where((w == 180.0) & (e == 180.0), -180.0, e)
    hi = np.where(hi >= lo, hi, hi + 360.0)
    mid = (lo + hi) / 2
    lon = np.where(point, w, np.where(mid > 180.0, mid - 360.0, mid))
    lat = np.where(point, s, (s + nn) / 2)
    out = np.stack([lo, hi, s, nn, lon, lat, t], axis=1)
    out[~has, :6] = NO_PLACE
    return out


def output_fields(fields: Sequence[str]) -> list[str]:
    """The Milvus output fields of a search's ``fields`` (``footprint``: the place fields)."""
    out: list[str] = []
    for f in fields:
        out += list(FIELDS) if f == "footprint" else [f]
    return out


def hit_place(entity: Mapping[str, Any]) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """A hit's ``(footprint (w, s, e, n) or None, time ISO 8601 or None)`` from its row (the
    values of :func:`rsir_sdk.geo.footprint_of_row`, without building objects: a search turns
    many hits)."""
    if "lat_min" not in entity:
        return None, None
    t = float(entity["t"])
    when = None if t <= NO_TIME / 10 else iso(t)
    south = float(entity["lat_min"])
    if south < -90.0:
        return None, when
    hi = float(entity["lon_max"])
    return (float(entity["lon_min"]), south, hi - 360.0 if hi > 180.0 else hi,
            float(entity["lat_max"])), when


def keeper(geo: GeoFilter) -> Callable[[Mapping[str, Any]], bool]:
    """The exact test of a row (holding the place fields) against ``geo``."""
    def keep(row: Mapping[str, Any]) -> bool:
        fp = footprint_of_row(row)
        t = float(row["t"])
        return geo.keep(fp, None if t <= NO_TIME / 10 else t)

    return keep


def near_topk(search: topk.SearchFn, fetch: topk.FetchFn, queries: Sequence[bytes], k: int,
              expr: str, radius: int | None, fields: list[str], stats: dict[str, int] | None,
              exact_ties: bool, keep: Callable[[Mapping[str, Any]], bool]) -> list[list[topk.Found]]:
    """Exact top-``k`` of the rows that pass ``keep`` among those matching ``expr``.

    Why it is exact: :func:`.topk.exact_topk` gives the first ``depth`` rows in the total order
    (distance, pk); the rows of that prefix that pass ``keep`` are a prefix of the passing rows
    in the same order. So when ``k`` pass, they are the answer; when fewer pass and the prefix
    was the whole match, so are they; else the query is asked again ``4x`` deeper, and past
    Milvus' cap the rest is read one distance at a time (:func:`_beyond`). ``fields`` must hold
    the place fields.
    """
    out: list[list[topk.Found]] = [[] for _ in queries]
    # a circle fills about pi/4 of its enclosing box: 2k deep usually finds k at once
    todo, depth = list(range(len(queries))), max(2 * k, 16)
    while todo:
        depth = min(MAX_TOPK, depth)
        # at most ~100,000 * 2 rows (with their place fields) per request: under gRPC's 64 MiB
        per = max(1, 100_000 // depth)
        found = [r for at in range(0, len(todo), per)
                 for r in topk.exact_topk(search, fetch, [queries[i] for i in todo[at : at + per]],
                                          depth, expr, radius, fields, stats, exact_ties)]
        left = []
        for qi, row in zip(todo, found):
            kept = [f for f in row if keep(f.entity or {})]
            if len(kept) >= k or len(row) < depth:
                out[qi] = kept[:k]
            elif depth >= MAX_TOPK:
                out[qi] = kept + _beyond(search, fetch, queries[qi], row[-1], k - len(kept),
                                         (expr, radius, stats), keep)
            else:
                left.append(qi)
        todo, depth = left, depth * 4
    return out


def _beyond(search: topk.SearchFn, fetch: topk.FetchFn, q: bytes, last: topk.Found, want: int,
            ctx: tuple[str, int | None, dict[str, int] | None],
            keep: Callable[[Mapping[str, Any]], bool]) -> list[topk.Found]:
    """The next ``want`` passing rows after ``last`` in (distance, pk) order, read one Hamming
    distance at a time (every row at a distance, split by pk prefix past Milvus' cap)."""
    expr, radius, stats = ctx
    top = len(q) * 8 if radius is None else radius
    out: list[topk.Found] = []
    for d in range(last.distance, top + 1):
        group = sorted((h for h in topk._all_at(search, q, d, expr, stats) if h.key() > last.key()),
                       key=topk.Found.key)
        if not group:
            continue
        rows = fetch([h.pk for h in group])
        for h in group:
            h.entity = rows.get(h.pk, {"id": h.id})
            if "lat_min" in h.entity and keep(h.entity):
                out.append(h)
                if len(out) >= want:
                    return out
    return out


def iter_rows(conn: Any, name: str, expr: str, fields: list[str], prefix: str = "",
              user_expr: str | None = None) -> Iterator[dict]:
    """Every row matching ``expr`` with ``fields``: one query per range of pk prefixes (hex
    digests), a full page (Milvus' 16,384-row cap) split further. ``user_expr``: the caller's
    own expression, so that Milvus refusing it is an ``InvalidInputError``."""
    res = conn.call("query", name, filter=keys.combine(expr, keys.pk_prefix(prefix)),
                    output_fields=fields, limit=MAX_TOPK, read=True,
                    what=f"reading rows of {name!r}", expression=user_expr)
    if len(res) >= MAX_TOPK:
        for ch in "0123456789abcdef":
            yield from iter_rows(conn, name, expr, fields, prefix + ch, user_expr)
        return
    yield from res


def count_exact(conn: Any, name: str, expr: str, geo: GeoFilter,
                user_expr: str | None = None) -> int:
    """How many rows match ``expr`` (the user's filter and the prefilter) and pass ``geo``."""
    keep = keeper(geo)
    return sum(1 for row in iter_rows(conn, name, expr, list(FIELDS), "", user_expr) if keep(row))
