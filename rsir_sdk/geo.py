"""Place and period: footprints, boxes, points with radii, periods, and the filters over them.

Pure Python + numpy, no geo library: what the store, the :class:`~rsir_sdk.retriever.Retriever`,
the CLI and the HTTP API share to say *where* and *when* (issue 22; docs/geo.md).

- :class:`BBox` ``(west, south, east, north)`` in WGS84 degrees; ``west > east`` crosses the
  antimeridian (the GeoJSON / STAC convention). :class:`Near` ``(lon, lat, metres)``: a true
  distance on the sphere. :class:`Period` ``(start, end)``: UTC epoch seconds, both inclusive,
  either open; parsed from ISO 8601 (:mod:`rsir_sdk.times`).
- :class:`Footprint`: the lon/lat box of an image, its centre, and an optional time.
- **Semantics**: a footprint *intersecting* the box counts; every bound is inclusive; longitudes
  are compared on the circle (-180 and 180 are one meridian); a footprint is *near* when the
  great-circle distance from the point to its box is at most ``metres``.
- **Engine prefilter**: :func:`scalar_fields` gives the typed scalar fields a store row holds
  (``lon_min, lon_max, lat_min, lat_max, lon, lat, t``); :meth:`GeoFilter.conditions` gives
  plain range conditions over them (:func:`to_expr` renders a Milvus expression). For a box and
  a period the conditions are exact; for ``near`` they select the boxes that meet a lon/lat box
  enclosing the circle, and :meth:`GeoFilter.keep` is the exact post-filter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import InvalidInputError
from .times import finite_number as _number
from .times import iso, parse_time

#: WGS84 mean radius (IUGG R1 = (2a + b) / 3), metres: the sphere distances are measured on
EARTH_RADIUS_M = 6_371_008.8
#: sentinel of the box and centre fields of a row without a footprint (fails every lat bound)
NO_PLACE = -1000.0
#: sentinel of the time field of a row without a time (before any time a period can name)
NO_TIME = -1.0e18
#: the earliest time a period can name: 0001-01-01T00:00:00Z
MIN_TIME = -62_135_596_800.0
#: the scalar fields a collection holds for place and period (Milvus DOUBLE each)
FIELDS = ("lon_min", "lon_max", "lat_min", "lat_max", "lon", "lat", "t")
_EPS_DEG = 1e-9  # widening of the near prefilter box against rounding (about 0.1 mm)

Range = tuple[str, str, float]  # (field, ">=" or "<=", value)
Alternatives = tuple[tuple[Range, ...], ...]  # any one alternative (all of its ranges) holds


def _check_lat(value: Any, name: str) -> float:
    lat = _number(value, name)
    if abs(lat) > 90:
        raise InvalidInputError(f"{name} must lie in [-90, 90] degrees, got {lat:g}")
    return lat


def _check_lon(value: Any, name: str) -> float:
    lon = _number(value, name)
    if abs(lon) > 180:
        raise InvalidInputError(f"{name} must lie in [-180, 180] degrees, got {lon:g}")
    return lon


def _parts(value: Any, n: int, name: str, form: str) -> list[Any]:
    """A comma-separated string or a sequence → exactly ``n`` parts, else one line."""
    if isinstance(value, str):
        parts: list[Any] = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        parts = list(value)
    else:
        raise InvalidInputError(f"{name} must be {form}, got {value!r}")
    if len(parts) != n or any(p == "" or p is None for p in parts):
        raise InvalidInputError(f"{name} must be {form} ({n} numbers), got {value!r}")
    return parts


def _named(message: str, default: str, name: str) -> str:
    """A check's message with the argument's ``name`` (e.g. ``--bbox``) for its default name,
    unless it names it already."""
    return message if message.startswith(name) else message.replace(default, name, 1)


def _arc(west: float, east: float) -> tuple[float, float]:
    """A longitude arc from ``west`` eastwards to ``east`` as ``(lo, hi)``: lo in [-180, 180),
    hi in [lo, lo + 360] (hi > 180 when the arc reaches across the antimeridian)."""
    lo = -180.0 if west == 180.0 else west
    hi = -180.0 if west == 180.0 and east == 180.0 else east
    return lo, hi if hi >= lo else hi + 360.0


@dataclass(frozen=True)
class BBox:
    """A lon/lat box in WGS84 degrees, bounds inclusive; ``west > east`` crosses the antimeridian.

    ``BBox(-180, s, 180, n)`` spans every longitude.
    """

    west: float
    south: float
    east: float
    north: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "west", _check_lon(self.west, "bbox west"))
        object.__setattr__(self, "east", _check_lon(self.east, "bbox east"))
        object.__setattr__(self, "south", _check_lat(self.south, "bbox south"))
        object.__setattr__(self, "north", _check_lat(self.north, "bbox north"))
        if self.south > self.north:
            raise InvalidInputError(
                f"bbox south ({self.south:g}) is north of bbox north ({self.north:g}): "
                "give (west, south, east, north)")

    @classmethod
    def parse(cls, value: Any, name: str = "bbox") -> BBox:
        """A box from a ``BBox``, a 4-sequence or ``"west,south,east,north"``; one line if not."""
        if isinstance(value, BBox):
            return value
        w, s, e, n = _parts(value, 4, name, "west,south,east,north")
        try:
            return cls(*(_number(v, f"{name} {k}") for k, v in zip(("west", "south", "east", "north"),
                                                                  (w, s, e, n))))
        except InvalidInputError as exc:
            raise InvalidInputError(_named(str(exc), "bbox", name)) from None

    @property
    def crosses_antimeridian(self) -> bool:
        """True when the box reaches from ``west`` eastwards across 180 to ``east``."""
        return self.west > self.east

    @property
    def width(self) -> float:
        """Its longitude extent in degrees (0..360)."""
        lo, hi = _arc(self.west, self.east)
        return hi - lo

    def contains_lon(self, lon: float) -> bool:
        """Whether the meridian ``lon`` lies in the box's longitude arc (bounds inclusive)."""
        lo, hi = _arc(self.west, self.east)
        x = -180.0 if lon == 180.0 else lon
        return lo <= x <= hi or lo <= x + 360.0 <= hi

    def contains(self, lon: float, lat: float) -> bool:
        """Whether the point lies in the box (bounds inclusive)."""
        return self.south <= lat <= self.north and self.contains_lon(lon)

    def intersects(self, other: BBox) -> bool:
        """Whether two boxes share a point (bounds inclusive, on the longitude circle)."""
        if other.south > self.north or other.north < self.south:
            return False
        return _arcs_meet(_arc(self.west, self.east), _arc(other.west, other.east))

    def conditions(self) -> Alternatives:
        """Range conditions on a row's fields selecting exactly the footprints meeting the box."""
        lo, hi = _arc(self.west, self.east)
        lat = (("lat_max", ">=", self.south), ("lat_min", "<=", self.north))
        alts = [(("lon_min", "<=", hi), ("lon_max", ">=", lo)),  # the arcs as stored
                (("lon_max", ">=", lo + 360.0),)]  # the row's arc reaches round to the box
        if hi >= 180.0:  # the box reaches (round) to the row; at 180 exactly, rows from -180
            alts.append((("lon_min", "<=", hi - 360.0),))  # (one meridian) touch it
        return tuple(lat + a for a in alts)


def _arcs_meet(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two normalised arcs (see :func:`_arc`) share a meridian."""
    return (a[0] <= b[1] and a[1] >= b[0]) or a[1] >= b[0] + 360.0 or b[1] >= a[0] + 360.0


@dataclass(frozen=True)
class Near:
    """Within ``metres`` (great-circle, on the WGS84 mean sphere) of the point ``(lon, lat)``."""

    lon: float
    lat: float
    metres: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "lon", _check_lon(self.lon, "near lon"))
        object.__setattr__(self, "lat", _check_lat(self.lat, "near lat"))
        metres = _number(self.metres, "near metres")
        if metres < 0:
            raise InvalidInputError(f"near metres must be >= 0, got {metres:g}")
        object.__setattr__(self, "metres", metres)

    @classmethod
    def parse(cls, value: Any, name: str = "near") -> Near:
        """From a ``Near``, a 3-sequence or ``"lon,lat,metres"``; one line if not."""
        if isinstance(value, Near):
            return value
        lon, lat, metres = _parts(value, 3, name, "lon,lat,metres")
        try:
            return cls(_number(lon, f"{name} lon"), _number(lat, f"{name} lat"),
                       _number(metres, f"{name} metres"))
        except InvalidInputError as exc:
            raise InvalidInputError(_named(str(exc), "near", name)) from None

    def enclosing_box(self) -> BBox:
        """A lon/lat box holding every point within ``metres``: the poles and the antimeridian
        handled (J. P. Matuschek, *Finding points within a distance of a latitude/longitude*)."""
        d = self.metres / EARTH_RADIUS_M
        south = math.degrees(math.radians(self.lat) - d) - _EPS_DEG
        north = math.degrees(math.radians(self.lat) + d) + _EPS_DEG
        if d >= math.pi or north >= 90.0 or south <= -90.0:  # a pole inside: every longitude
            return BBox(-180.0, max(south, -90.0), 180.0, min(north, 90.0))
        ratio = math.sin(d) / math.cos(math.radians(self.lat))
        half = math.degrees(math.asin(min(ratio, 1.0))) + _EPS_DEG
        if half >= 180.0:
            return BBox(-180.0, south, 180.0, north)
        west, east = self.lon - half, self.lon + half
        west = west + 360.0 if west < -180.0 else west
        east = east - 360.0 if east > 180.0 else east
        return BBox(west, south, east, north)

    def distance(self, footprint: Footprint) -> float:
        """Great-circle metres from the point to the footprint's box (0 inside)."""
        return box_distance(self.lon, self.lat, footprint.box)


@dataclass(frozen=True)
class Period:
    """A time interval in UTC epoch seconds, both ends inclusive; ``None`` leaves an end open."""

    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, _number(v, f"time {name}"))
        if self.start is not None and self.end is not None and self.start > self.end:
            raise InvalidInputError(f"time start ({iso(self.start)}) is after time end ({iso(self.end)})")

    @classmethod
    def parse(cls, value: Any, name: str = "time") -> Period:
        """From a ``Period``, a pair ``(start, end)`` or ``"start/end"`` (ISO 8601 interval;
        ``..`` or an empty side is open). A date-only end covers its whole day (week, month,
        year), and a single date, week, month or year without ``/`` is all of it (``2021-06``)."""
        if isinstance(value, Period):
            return value
        if isinstance(value, str):
            if "/" not in value:  # one date, week, month or year: all of it
                if value.strip() in ("", ".."):
                    raise InvalidInputError(f"{name} must be 'start/end' (ISO 8601, '..' for "
                                            f"open) or one date, got {value!r}")
                return cls(parse_time(value, name), parse_time(value, name, end=True))
            pair: Sequence[Any] = value.split("/", 1)
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            pair = value
        else:
            raise InvalidInputError(f"{name} must be (start, end) or 'start/end', got {value!r}")
        start, end = (None if v in (None, "", "..") else v for v in pair)
        return cls(None if start is None else parse_time(start, f"{name} start"),
                   None if end is None else parse_time(end, f"{name} end", end=True))

    def contains(self, t: float | None) -> bool:
        """Whether the time ``t`` lies in the period; a missing time never does."""
        if t is None:
            return False
        return (self.start is None or t >= self.start) and (self.end is None or t <= self.end)

    def conditions(self) -> Alternatives:
        """Range conditions on the row's ``t`` (rows without a time never match)."""
        ranges: tuple[Range, ...] = (("t", ">=", MIN_TIME if self.start is None else self.start),)
        if self.end is not None:
            ranges += (("t", "<=", self.end),)
        return (ranges,)


@dataclass(frozen=True)
class Footprint:
    """Where an image lies: its lon/lat ``box``, its ``centre`` ``(lon, lat)``, its ``time``
    (UTC epoch seconds) when known."""

    box: BBox
    centre: tuple[float, float]
    time: float | None = None

    def __post_init__(self) -> None:
        lon, lat = _parts(self.centre, 2, "footprint centre", "lon,lat")
        object.__setattr__(self, "centre", (_check_lon(lon, "footprint lon"), _check_lat(lat, "footprint lat")))
        if self.time is not None:
            object.__setattr__(self, "time", _number(self.time, "footprint time"))

    @classmethod
    def of_box(cls, box: Any, time: float | None = None) -> Footprint:
        """A footprint from a box, its centre the middle of the box's arcs."""
        b = BBox.parse(box)
        lo, hi = _arc(b.west, b.east)
        lon = (lo + hi) / 2
        return cls(b, (lon - 360.0 if lon > 180.0 else lon, (b.south + b.north) / 2), time)

    @classmethod
    def of_point(cls, lon: float, lat: float, time: float | None = None) -> Footprint:
        """A footprint of one point (a box of no extent)."""
        lon, lat = _check_lon(lon, "lon"), _check_lat(lat, "lat")
        return cls(BBox(lon, lat, lon, lat), (lon, lat), time)

    @classmethod
    def of_metadata(cls, meta: Mapping[str, Any]) -> Footprint | None:
        """From an item's georeferencing (``lonlat_bounds``, ``lonlat``, ``time``; see
        :func:`rsir_sdk.georef.georeference`), or None when it has no lon/lat box."""
        box = meta.get("lonlat_bounds")
        if box is None:
            return None
        t = meta.get("time")
        time = None if t is None else parse_time(t, "time")
        fp = cls.of_box(box, time)
        centre = meta.get("lonlat")
        return fp if centre is None else cls(fp.box, tuple(centre), time)


def scalar_fields(footprint: Footprint | None, time: float | None = None) -> dict[str, float]:
    """The place/period fields of one store row (:data:`FIELDS`): the box as a normalised arc
    (``lon_min`` in [-180, 180), ``lon_max`` in [lon_min, lon_min + 360], so above 180 when the
    box reaches across the antimeridian), the centre and the time; sentinels where absent
    (:data:`NO_PLACE`, :data:`NO_TIME`), which no condition of this module accepts."""
    t = footprint.time if footprint is not None and time is None else time
    out = {"t": NO_TIME if t is None else _number(t, "time")}
    if footprint is None:
        out.update({k: NO_PLACE for k in FIELDS if k != "t"})
        return out
    b = footprint.box
    lo, hi = _arc(b.west, b.east)
    out.update(lon_min=lo, lon_max=hi, lat_min=b.south, lat_max=b.north,
               lon=footprint.centre[0], lat=footprint.centre[1])
    return out


def footprint_of_row(row: Mapping[str, Any]) -> Footprint | None:
    """The footprint back from a row's :func:`scalar_fields` (None for the sentinel)."""
    if float(row["lat_min"]) < -90.0:
        return None
    hi = float(row["lon_max"])
    box = BBox(float(row["lon_min"]), float(row["lat_min"]), hi - 360.0 if hi > 180.0 else hi,
               float(row["lat_max"]))
    t = float(row["t"])
    return Footprint(box, (float(row["lon"]), float(row["lat"])), None if t <= NO_TIME else t)


def box_distance(lon: float, lat: float, box: BBox) -> float:
    """Great-circle metres from a point to a lon/lat box on the mean sphere: 0 inside, else to
    the nearest point of its edges (meridian arcs and parallel arcs, each exactly)."""
    if box.contains(lon, lat):
        return 0.0
    best = min(_to_meridian(lon, lat, box.west, box.south, box.north),
               _to_meridian(lon, lat, box.east, box.south, box.north))
    if box.contains_lon(lon):  # the nearest point of a parallel is on the point's meridian
        best = min(best, abs(lat - box.south) * math.pi / 180.0, abs(lat - box.north) * math.pi / 180.0)
    return best * EARTH_RADIUS_M


def _central_angle(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Haversine central angle in radians."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * math.asin(min(1.0, math.sqrt(h)))


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle metres between two points on the WGS84 mean sphere (haversine)."""
    return _central_angle(lon1, lat1, lon2, lat2) * EARTH_RADIUS_M


def _to_meridian(lon: float, lat: float, mlon: float, south: float, north: float) -> float:
    """Central angle from a point to the meridian arc ``mlon`` between two latitudes."""
    best = min(_central_angle(lon, lat, mlon, south), _central_angle(lon, lat, mlon, north))
    dl = math.radians(lon - mlon)
    if math.cos(dl) > 0:  # the foot of the perpendicular lies on this half meridian
        phi = math.radians(lat)
        foot = math.degrees(math.atan2(math.sin(phi), math.cos(phi) * math.cos(dl)))
        if south <= foot <= north:
            best = min(best, math.asin(min(1.0, abs(math.cos(phi) * math.sin(dl)))))
    return best


@dataclass(frozen=True)
class GeoFilter:
    """Place and period constraints of a search; any left ``None`` does not constrain."""

    bbox: BBox | None = None
    near: Near | None = None
    time: Period | None = None

    @classmethod
    def of(cls, bbox: Any = None, near: Any = None, time: Any = None) -> GeoFilter:
        """Parse each constraint (``BBox.parse``, ``Near.parse``, ``Period.parse``)."""
        return cls(None if bbox is None else BBox.parse(bbox), None if near is None else Near.parse(near),
                   None if time is None else Period.parse(time))

    @property
    def active(self) -> bool:
        """Whether anything is constrained."""
        return self.bbox is not None or self.near is not None or self.time is not None

    def conditions(self) -> tuple[Alternatives, ...]:
        """All must hold: the engine prefilter (exact for bbox and time, a box for near)."""
        out: list[Alternatives] = []
        if self.bbox is not None:
            out.append(self.bbox.conditions())
        if self.near is not None:
            out.append(self.near.enclosing_box().conditions())
        if self.time is not None:
            out.append(self.time.conditions())
        return tuple(out)

    def expr(self) -> str:
        """The prefilter as a Milvus boolean expression ('' when nothing is constrained)."""
        return to_expr(self.conditions())

    def keep(self, footprint: Footprint | None, time: float | None = None) -> bool:
        """The exact filter: the footprint meets the box, lies within ``near``, and its time
        (or ``time``) lies in the period; an item without a footprint (time) fails place (period)."""
        t = time if time is not None else (footprint.time if footprint is not None else None)
        if self.time is not None and not self.time.contains(t):
            return False
        if self.bbox is None and self.near is None:
            return True
        if footprint is None:
            return False
        if self.bbox is not None and not self.bbox.intersects(footprint.box):
            return False
        return self.near is None or self.near.distance(footprint) <= self.near.metres


def matches(conditions: Iterable[Alternatives], row: Mapping[str, Any]) -> bool:
    """Evaluate conditions on a row of :func:`scalar_fields` in Python (what the engine does)."""
    def holds(r: Range) -> bool:
        v = float(row[r[0]])
        return v >= r[2] if r[1] == ">=" else v <= r[2]

    return all(any(all(holds(r) for r in alt) for alt in alts) for alts in conditions)


def to_expr(conditions: Iterable[Alternatives]) -> str:
    """Conditions → a Milvus expression such as ``(lat_max >= 10.0 and ...) or (...)``."""
    clauses = []
    for alts in conditions:
        terms = [" and ".join(f"{f} {op} {_literal(v)}" for f, op, v in alt) for alt in alts]
        clauses.append(terms[0] if len(terms) == 1 else " or ".join(f"({t})" for t in terms))
    return " and ".join(f"({c})" for c in clauses)


def _literal(v: float) -> str:
    """A float as a Milvus literal: full precision, never in exponent notation."""
    text = repr(float(v))
    if "e" in text:
        text = f"{v:.24f}".rstrip("0")
        text += "0" if text.endswith(".") else ""
    return text


def enclosing_box(lons: Sequence[float] | np.ndarray, lats: Sequence[float] | np.ndarray) -> BBox:
    """The smallest lon/lat box holding the points: the longitudes' shortest covering arc (the
    complement of the widest gap between them on the circle), so it may cross the antimeridian."""
    lon = (np.asarray(lons, dtype=np.float64) + 180.0) % 360.0 - 180.0
    lat = np.asarray(lats, dtype=np.float64)
    if lon.size == 0 or not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise InvalidInputError("a footprint needs finite points")
    s = np.unique(lon)
    gaps = np.diff(np.append(s, s[0] + 360.0))
    i = int(np.argmax(gaps))
    south, north = float(np.clip(lat.min(), -90, 90)), float(np.clip(lat.max(), -90, 90))
    if s.size == 1:
        return BBox(float(s[0]), south, float(s[0]), north)
    west, east = float(s[(i + 1) % s.size]), float(s[i])
    return BBox(west, south, east, north)


#: a manifest box across 180 wider than this reads as west and east swapped (13.4 and 13.3
#: made a box of 359.9 degrees); a wide polar swath across 180 (200 degrees) is kept
SWAPPED_WIDTH_DEG = 300.0


def place_of_columns(row: Mapping[str, Any], where: str) -> tuple[Footprint | None, float | None]:
    """A manifest row's ``(footprint, time)`` from its ``lon,lat`` or ``west,south,east,north``
    columns and its ``time`` column (each None when not given); one line naming ``where`` for a
    half-given box or point, a bad number or a time that does not parse."""
    def given(k: str) -> bool:
        v = row.get(k)
        return v is not None and str(v).strip() != ""

    box_keys, pt_keys = ("west", "south", "east", "north"), ("lon", "lat")
    try:
        t = parse_time(row["time"], "time") if given("time") else None
        n_box, n_pt = sum(given(k) for k in box_keys), sum(given(k) for k in pt_keys)
        if n_box not in (0, 4):
            missing = ", ".join(k for k in box_keys if not given(k))
            raise InvalidInputError(f"half a box: {missing} missing")
        if n_pt == 1:
            raise InvalidInputError(f"half a point: {'lon' if not given('lon') else 'lat'} missing")
        if n_box == 4:
            fp = Footprint.of_box([row[k] for k in box_keys], t)
            if fp.box.crosses_antimeridian and fp.box.width > SWAPPED_WIDTH_DEG:
                raise InvalidInputError(
                    f"bbox west ({fp.box.west:g}) is east of bbox east ({fp.box.east:g}), which "
                    f"reads as a box across 180 of {fp.box.width:.4g} degrees: west and east "
                    f"swapped? (a box across 180 has west > east; one wider than "
                    f"{SWAPPED_WIDTH_DEG:g} degrees is refused as a likely swap)")
            if n_pt == 2:
                fp = Footprint(fp.box, (_number(row["lon"], "lon"), _number(row["lat"], "lat")), t)
            return fp, t
        if n_pt == 2:
            return Footprint.of_point(_number(row["lon"], "lon"), _number(row["lat"], "lat"), t), t
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None
    return None, t
