"""GeoTIFF georeferencing read from the tags themselves (no GDAL): bounds, CRS, footprint, time.

ModelPixelScale (33550) + ModelTiepoint (33922) or ModelTransformation (34264) give the affine
map from pixels to the raster's CRS; the GeoKeyDirectory (34735) gives the EPSG code
(ProjectedCSType 3072, else GeographicType 2048) and pixel-is-point. The WGS84 footprint is the
lon/lat box of the image outline sampled densely (:data:`OUTLINE_SAMPLES` points per edge, so the
curved edges of a projected CRS are covered), crossing the antimeridian when the image does and
spanning every longitude when a pole lies inside the image.

**CRS.** With pyproj (the ``geo`` extra; its wheels carry the PROJ database, no network is
used) any CRS the EPSG database knows is converted. Without pyproj a hand-written fallback
converts EPSG:4326, UTM (326xx/327xx) and Web Mercator (3857) only. A CRS neither knows gives
bounds but no footprint, and one line under ``footprint_error``: a tag that cannot be made sense
of gives fewer fields, never an error (the image stays readable and is indexed without a place).

**Time.** EXIF DateTimeOriginal (36867), else the TIFF DateTime tag (306), read as UTC (the
tags carry no zone), gives ``time`` (ISO 8601); a date tag that does not parse gives
``time_error`` (one line) instead.

**Photos** (JPEG, PNG, WebP: :func:`photo_georef`): the EXIF GPS position is a point footprint,
and the EXIF times as above.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from typing import Any, Mapping

import numpy as np

from .errors import InvalidInputError
from .geo import BBox, enclosing_box, iso, parse_time

TAG_DATETIME = 306
TAG_PIXEL_SCALE = 33550
TAG_TIEPOINT = 33922
TAG_TRANSFORMATION = 34264
TAG_GEOKEYS = 34735
TAG_DATETIME_ORIGINAL = 36867  # in the EXIF IFD: readers put it among the tags they pass
TAG_GDAL_NODATA = 42113
#: the TIFF tags a reader should hand to :func:`georeference` (plus EXIF DateTimeOriginal)
GEO_TAGS = (TAG_DATETIME, TAG_PIXEL_SCALE, TAG_TIEPOINT, TAG_TRANSFORMATION, TAG_GEOKEYS, TAG_GDAL_NODATA)
#: points sampled along each edge of the image outline for its footprint
OUTLINE_SAMPLES = 33
_FALLBACK_HINT = "pip install 'rsir-sdk[geo]' (pyproj) for CRSs other than EPSG:4326, UTM and 3857"
_local = threading.local()  # pyproj transformers are not shared between threads

Affine = tuple[float, float, float, float, float, float]  # x = a i + b j + c, y = d i + e j + f


def parse_geokeys(directory: Any) -> dict[int, Any]:
    """GeoKeyDirectory (tag 34735) values → ``{key id: value}`` for the keys stored inline.

    >>> parse_geokeys((1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 32633))
    {1024: 1, 3072: 32633}
    """
    vals = [int(v) for v in directory]
    if len(vals) < 4:
        return {}
    n = vals[3]
    out: dict[int, Any] = {}
    for i in range(n):
        base = 4 + 4 * i
        if base + 3 >= len(vals):
            break
        key, location, _count, value = vals[base : base + 4]
        if location == 0:  # value stored in the directory itself (SHORT keys: codes, enums)
            out[key] = value
    return out


def pyproj_available() -> bool:
    """Whether the ``geo`` extra's pyproj can be imported (any EPSG CRS)."""
    return importlib.util.find_spec("pyproj") is not None


def georeference(tags: Mapping[int, Any], width: int, height: int) -> dict[str, Any]:
    """Bounds, CRS, footprint and time from TIFF tag values; ``{}`` when there are none.

    Returns ``crs`` (``"EPSG:<code>"``, when known), ``bounds`` ``[minx, miny, maxx, maxy]`` in
    the CRS, ``lonlat_bounds`` ``[west, south, east, north]`` (``west > east`` across the
    antimeridian; rounded outwards to 1e-7 degrees) and ``lonlat`` (the image centre) when the
    CRS converts, else ``footprint_error`` (one line), and ``time`` from the date tags.

    >>> g = georeference({33550: (10.0, 10.0, 0.0), 33922: (0, 0, 0, 500000.0, 5000000.0, 0),
    ...                   34735: (1, 1, 0, 1, 3072, 0, 1, 32633)}, 100, 100)
    >>> g["crs"], g["bounds"]
    ('EPSG:32633', [500000.0, 4999000.0, 501000.0, 5000000.0])
    """
    try:
        keys = parse_geokeys(tags[TAG_GEOKEYS]) if TAG_GEOKEYS in tags else {}
    except (TypeError, ValueError, OverflowError):
        keys = {}
    epsg = None
    for key in (3072, 2048):  # ProjectedCSTypeGeoKey, GeographicTypeGeoKey
        code = keys.get(key)
        if code and code != 32767:  # 32767 = user-defined
            epsg = int(code)
            break
    try:
        affine = _affine(tags, keys.get(1025) == 2)
    except (TypeError, ValueError, OverflowError):  # malformed tag values: no bounds
        affine = None
    out: dict[str, Any] = {}
    if epsg is not None:
        out["crs"] = f"EPSG:{epsg}"
    if affine is not None and not all(math.isfinite(v) for v in affine):
        out["footprint_error"] = "the georeferencing tags hold values that are not finite numbers"
    elif affine is not None and epsg is None:
        out["footprint_error"] = ("a CRS without an EPSG code (user-defined): no footprint can be "
                                  "made (bounds are kept in the file's own coordinates)")
    if affine is not None and all(math.isfinite(v) for v in affine):
        xs, ys = _apply(affine, np.array([0.0, width, 0.0, width]), np.array([0.0, 0.0, height, height]))
        out["bounds"] = [_round(xs.min()), _round(ys.min()), _round(xs.max()), _round(ys.max())]
        if epsg is not None:
            try:
                out.update(footprint(epsg, affine, width, height))
            except InvalidInputError as exc:
                out["footprint_error"] = str(exc)
    return _with_time(out, tags)


def acquisition_time(tags: Mapping[int, Any]) -> str | None:
    """EXIF DateTimeOriginal, else TIFF DateTime, as ISO 8601 UTC; None when absent or unparsable."""
    return time_of(tags)[0]


def time_of(tags: Mapping[int, Any]) -> tuple[str | None, str | None]:
    """``(time, error)``: EXIF DateTimeOriginal, else TIFF DateTime, as ISO 8601 UTC; when a
    date tag is there but none parses, ``error`` says so in one line (it was dropped without a
    trace, and the image silently left every period search)."""
    bad = None
    for code in (TAG_DATETIME_ORIGINAL, TAG_DATETIME):
        value = tags.get(code)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str) and value.strip("\x00 :0"):  # all zeros: EXIF's "unknown"
            try:
                return iso(parse_time(value.strip("\x00 "), "TIFF date")), None
            except InvalidInputError:
                bad = bad or value.strip("\x00 ")
    if bad is None:
        return None, None
    return None, f"the date tag {bad[:40]!r} is not a date and time (YYYY:MM:DD HH:MM:SS)"


#: EXIF GPS IFD tags: latitude reference and value, longitude reference and value
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4


def photo_georef(tags: Mapping[int, Any], gps: Mapping[int, Any]) -> dict[str, Any]:
    """A photo's place and time from its EXIF (a JPEG, PNG or WebP from a drone or a phone):
    the GPS position as a point footprint (``lonlat_bounds`` a zero-size box, ``lonlat``),
    ``time`` as :func:`time_of` reads it, ``footprint_error``/``time_error`` when a tag is
    there but unusable; ``{}`` without any. Why: such photos were left out of every place and
    period search, while the same tags in a TIFF were read.

    >>> photo_georef({}, {1: "N", 2: (43, 36, 0.0), 3: "E", 4: (1, 26, 24.0)})["lonlat"]
    [1.44, 43.6]
    """
    out: dict[str, Any] = {}
    if GPS_LAT in gps or GPS_LON in gps:
        try:
            lat = _dms(gps[GPS_LAT], gps.get(GPS_LAT_REF), "S")
            lon = _dms(gps[GPS_LON], gps.get(GPS_LON_REF), "W")
        except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
            out["footprint_error"] = "the EXIF GPS tags hold no readable position"
        else:
            if not (abs(lat) <= 90 and abs(lon) <= 180):
                out["footprint_error"] = f"the EXIF GPS position {lat}, {lon} is off the globe"
            elif lat == 0 and lon == 0:
                out["footprint_error"] = "the EXIF GPS position is 0, 0 (a camera without a fix)"
            else:
                out.update(crs="EPSG:4326", lonlat=[lon, lat], lonlat_bounds=[lon, lat, lon, lat])
    return _with_time(out, tags)


def _with_time(out: dict[str, Any], tags: Mapping[int, Any]) -> dict[str, Any]:
    """``out`` with the date tags' ``time``, or their ``time_error`` (:func:`time_of`)."""
    time, error = time_of(tags)
    if time is not None:
        out["time"] = time
    elif error is not None:
        out["time_error"] = error
    return out


def _dms(value: Any, ref: Any, negative: str) -> float:
    """Degrees from EXIF (degrees, minutes, seconds) rationals and a hemisphere letter."""
    d, m, sec = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (d, m, sec)):
        raise ValueError("not finite")
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    sign = -1.0 if str(ref or "").strip("\x00 ").upper() == negative else 1.0
    return round(sign * (d + m / 60.0 + sec / 3600.0), 7)


def _affine(tags, pixel_is_point) -> Affine | None:
    shift = -0.5 if pixel_is_point else 0.0  # pixel-is-point: tie points name pixel centres
    if TAG_TRANSFORMATION in tags:
        m = [float(v) for v in tags[TAG_TRANSFORMATION]]
        if len(m) < 8:
            return None
        return (m[0], m[1], m[3] + (m[0] + m[1]) * shift, m[4], m[5], m[7] + (m[4] + m[5]) * shift)
    if TAG_TIEPOINT in tags and TAG_PIXEL_SCALE in tags:
        tp = [float(v) for v in tags[TAG_TIEPOINT]]
        sc = [float(v) for v in tags[TAG_PIXEL_SCALE]]
        if len(tp) < 6 or len(sc) < 2:
            return None
        ti, tj, tx, ty = tp[0], tp[1], tp[3], tp[4]
        sx, sy = sc[0], sc[1]
        return (sx, 0.0, tx + (shift - ti) * sx, 0.0, -sy, ty - (shift - tj) * sy)
    return None


def _apply(a: Affine, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return a[0] * i + a[1] * j + a[2], a[3] * i + a[4] * j + a[5]


def footprint(epsg: int, affine: Affine, width: int, height: int) -> dict[str, Any]:
    """``lonlat_bounds`` and ``lonlat`` of an image whose pixels map to EPSG ``epsg`` by
    ``affine``; :class:`InvalidInputError` (one line) for a CRS that cannot be converted or an
    outline that falls outside it (metres tagged as degrees: latitudes past 90)."""
    n = OUTLINE_SAMPLES
    t = np.linspace(0.0, 1.0, n)
    i = np.concatenate([t * width, np.full(n, float(width)), t[::-1] * width, np.zeros(n), [width / 2]])
    j = np.concatenate([np.zeros(n), t * height, np.full(n, float(height)), t[::-1] * height, [height / 2]])
    xs, ys = _apply(affine, i, j)
    lons, lats = to_lonlat_many(xs, ys, epsg)
    if not (np.isfinite(lons).all() and np.isfinite(lats).all()):
        raise InvalidInputError(f"the image's outline has no longitude/latitude in EPSG:{epsg} "
                                f"(it lies outside the CRS's area)")
    if np.abs(lats).max() > 90:
        raise InvalidInputError(f"the image's outline reaches latitude {np.abs(lats).max():.4g} in "
                                f"EPSG:{epsg}, past 90: are its coordinates in another CRS "
                                f"(metres tagged as degrees)?")
    ring_lon, ring_lat = lons[:-1], lats[:-1]
    if _geographic(epsg) and np.ptp(ring_lon) >= 360.0:
        box = BBox(-180.0, float(ring_lat.min()), 180.0, float(ring_lat.max()))
    else:
        box = enclosing_box(ring_lon, ring_lat)
    for pole in (90.0, -90.0):
        if _pole_inside(epsg, affine, width, height, pole):
            box = BBox(-180.0, min(box.south, pole), 180.0, max(box.north, pole))
    q = 1e7
    bounds = [math.floor(box.west * q) / q, math.floor(box.south * q) / q,
              math.ceil(box.east * q) / q, math.ceil(box.north * q) / q]
    bounds = [max(-180.0, min(180.0, bounds[0])), max(-90.0, bounds[1]),
              max(-180.0, min(180.0, bounds[2])), min(90.0, bounds[3])]
    lon_c = (float(lons[-1]) + 180.0) % 360.0 - 180.0
    return {"lonlat_bounds": bounds, "lonlat": [round(lon_c, 7), round(float(lats[-1]), 7)]}


def _pole_inside(epsg: int, affine: Affine, width: int, height: int, pole: float) -> bool:
    """Whether the pole maps inside the image (its footprint then spans every longitude)."""
    if _geographic(epsg):
        return False  # the outline itself reaches the pole's latitude
    try:
        x, y = _transformer(epsg, inverse=True).transform(0.0, pole)
    except (InvalidInputError, ImportError):
        return False
    except Exception:  # noqa: BLE001 - pyproj raises ProjError and others for a pole outside the CRS
        return False
    a, b, c, d, e, f = affine
    det = a * e - b * d
    if not (math.isfinite(x) and math.isfinite(y)) or det == 0:
        return False
    i = (e * (x - c) - b * (y - f)) / det
    j = (a * (y - f) - d * (x - c)) / det
    return 0.0 <= i <= width and 0.0 <= j <= height


def _geographic(epsg: int) -> bool:
    if not pyproj_available():
        return epsg == 4326
    try:
        return bool(_crs(epsg).is_geographic)
    except InvalidInputError:
        return False


def _crs(epsg: int):
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    cache = _local.__dict__.setdefault("crs", {})
    if epsg not in cache:
        try:
            cache[epsg] = CRS.from_epsg(epsg)
        except CRSError:
            raise InvalidInputError(
                f"unknown CRS EPSG:{epsg}: not in the EPSG database PROJ carries") from None
    return cache[epsg]


def _transformer(epsg: int, inverse: bool = False):
    """A pyproj transformer EPSG:<epsg> → WGS84 lon/lat (or back), one per thread and CRS."""
    from pyproj import Transformer

    cache = _local.__dict__.setdefault("transformers", {})
    key = (epsg, inverse)
    if key not in cache:
        src, dst = _crs(epsg), "EPSG:4326"
        cache[key] = (Transformer.from_crs(dst, src, always_xy=True) if inverse
                      else Transformer.from_crs(src, dst, always_xy=True))
    return cache[key]


def to_lonlat_many(xs: Any, ys: Any, epsg: int) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 ``(lons, lats)`` of points in EPSG ``epsg`` (non-finite where outside the CRS).

    By pyproj when installed (any EPSG CRS), else by :func:`to_lonlat` (4326, UTM, 3857);
    :class:`InvalidInputError` (one line) for a CRS that cannot be converted.
    """
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if pyproj_available():
        lon, lat = _transformer(epsg).transform(x, y, errcheck=False)
        return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    if not _fallback_knows(epsg):
        raise InvalidInputError(f"CRS EPSG:{epsg} cannot be converted without pyproj: {_FALLBACK_HINT}")
    pts = [to_lonlat(a, b, epsg) or (math.nan, math.nan) for a, b in zip(x.ravel(), y.ravel())]
    return (np.array([p[0] for p in pts]).reshape(x.shape), np.array([p[1] for p in pts]).reshape(y.shape))


def _fallback_knows(epsg: int) -> bool:
    return epsg in (4326, 3857) or 32601 <= epsg <= 32660 or 32701 <= epsg <= 32760


def to_lonlat(x: float, y: float, epsg: int) -> tuple[float, float] | None:
    """WGS84 ``(lon, lat)`` of a point given in EPSG:4326, UTM (326xx/327xx) or 3857; else None.

    The hand-written fallback used when pyproj is not installed (and an independent check of it).

    >>> lon, lat = to_lonlat(448250.599, 5411951.599, 32631)   # the Eiffel Tower
    >>> round(lon, 4), round(lat, 4)
    (2.2945, 48.8584)
    """
    try:
        if epsg == 4326:
            lon, lat = float(x), float(y)
        elif epsg == 3857:
            r = 6378137.0
            lon = math.degrees(x / r)
            lat = math.degrees(2 * math.atan(math.exp(y / r)) - math.pi / 2)
        elif 32601 <= epsg <= 32660 or 32701 <= epsg <= 32760:
            lon, lat = _utm_inverse(x, y, epsg % 100, north=epsg < 32700)
        else:
            return None
    except (OverflowError, ValueError, ZeroDivisionError):  # coordinates far outside the CRS
        return None
    if not (math.isfinite(lon) and math.isfinite(lat)) or abs(lat) > 90 or abs(lon) > 540:
        return None
    return lon, lat


def _utm_inverse(easting: float, northing: float, zone: int, north: bool) -> tuple[float, float]:
    """UTM (WGS84) → lon/lat by the series of Snyder, *Map Projections* (1987), p. 63 (mm-level)."""
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    x = easting - 500000.0
    y = northing if north else northing - 10_000_000.0
    mu = (y / k0) / (a * (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256))
    e1 = (1 - math.sqrt(1 - e2)) / (1 + math.sqrt(1 - e2))
    phi1 = (
        mu
        + (3 * e1 / 2 - 27 * e1**3 / 32) * math.sin(2 * mu)
        + (21 * e1**2 / 16 - 55 * e1**4 / 32) * math.sin(4 * mu)
        + (151 * e1**3 / 96) * math.sin(6 * mu)
        + (1097 * e1**4 / 512) * math.sin(8 * mu)
    )
    s, c, t = math.sin(phi1), math.cos(phi1), math.tan(phi1)
    n1 = a / math.sqrt(1 - e2 * s * s)
    t1, c1 = t * t, ep2 * c * c
    r1 = a * (1 - e2) / (1 - e2 * s * s) ** 1.5
    d = x / (n1 * k0)
    lat = phi1 - (n1 * t / r1) * (
        d**2 / 2
        - (5 + 3 * t1 + 10 * c1 - 4 * c1**2 - 9 * ep2) * d**4 / 24
        + (61 + 90 * t1 + 298 * c1 + 45 * t1**2 - 252 * ep2 - 3 * c1**2) * d**6 / 720
    )
    lon = (
        d
        - (1 + 2 * t1 + c1) * d**3 / 6
        + (5 - 2 * c1 + 28 * t1 - 3 * c1**2 + 8 * ep2 + 24 * t1**2) * d**5 / 120
    ) / c
    return (zone - 1) * 6 - 180 + 3 + math.degrees(lon), math.degrees(lat)



def _round(v: float) -> float:
    return round(float(v), 6)


def with_georefs(metadata: Any, georefs: list[dict[str, Any]]) -> Any:
    """A write's metadata with each image's georeferencing (as :func:`georeference` gives it)
    beneath the caller's own keys, as ``rsir index`` stores it: the store fills an item's place
    and time from it. ``metadata`` is returned unchanged when no image had any."""
    if not any(georefs):
        return metadata
    given = list(metadata) if metadata is not None else [None] * len(georefs)
    return [{**geo, **(meta or {})} if geo else meta for meta, geo in zip(given, georefs)]
