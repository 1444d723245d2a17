"""GeoTIFF georeferencing read from the tags themselves (no GDAL): bounds, CRS, lon/lat.

ModelPixelScale (33550) + ModelTiepoint (33922) or ModelTransformation (34264) give the bounds
in the raster's CRS; the GeoKeyDirectory (34735) gives the EPSG code (ProjectedCSType 3072, else
GeographicType 2048) and pixel-is-point. WGS84 lon/lat bounds and centre are added for
EPSG:4326, UTM (326xx/327xx) and Web Mercator (3857) when the coordinates are in range; a tag
that cannot be made sense of gives fewer fields, never an error (the image stays readable).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

TAG_PIXEL_SCALE = 33550
TAG_TIEPOINT = 33922
TAG_TRANSFORMATION = 34264
TAG_GEOKEYS = 34735
TAG_GDAL_NODATA = 42113
#: the TIFF tags a reader should hand to :func:`georeference`
GEO_TAGS = (TAG_PIXEL_SCALE, TAG_TIEPOINT, TAG_TRANSFORMATION, TAG_GEOKEYS, TAG_GDAL_NODATA)


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


def georeference(tags: Mapping[int, Any], width: int, height: int) -> dict[str, Any]:
    """Bounds, CRS and lon/lat from GeoTIFF tag values; ``{}`` when the raster is not georeferenced.

    Returns ``crs`` (``"EPSG:<code>"``, when known), ``bounds`` ``[minx, miny, maxx, maxy]`` in
    the CRS, and for EPSG:4326, UTM and Web Mercator ``lonlat_bounds`` ``[west, south, east,
    north]`` and ``lonlat`` (the centre, ``[lon, lat]``).

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
    pixel_is_point = keys.get(1025) == 2
    try:
        corners = _corners(tags, width, height, pixel_is_point)
    except (TypeError, ValueError, OverflowError):  # malformed tag values: no bounds
        corners = None
    out: dict[str, Any] = {}
    if epsg is not None:
        out["crs"] = f"EPSG:{epsg}"
    if corners is None or not all(math.isfinite(v) for c in corners for v in c):
        return out
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    out["bounds"] = [_round(min(xs)), _round(min(ys)), _round(max(xs)), _round(max(ys))]
    if epsg is not None:
        lonlat = [p for p in (to_lonlat(x, y, epsg) for x, y in corners) if p is not None]
        if len(lonlat) == len(corners):
            lons, lats = [p[0] for p in lonlat], [p[1] for p in lonlat]
            out["lonlat_bounds"] = [round(min(lons), 7), round(min(lats), 7),
                                    round(max(lons), 7), round(max(lats), 7)]
            cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
            centre = to_lonlat(cx, cy, epsg)
            if centre is not None:
                out["lonlat"] = [round(centre[0], 7), round(centre[1], 7)]
    return out


def _corners(tags, width, height, pixel_is_point) -> list[tuple[float, float]] | None:
    shift = -0.5 if pixel_is_point else 0.0  # pixel-is-point: tie points name pixel centres
    if TAG_TRANSFORMATION in tags:
        m = [float(v) for v in tags[TAG_TRANSFORMATION]]
        if len(m) < 8:
            return None

        def at(i: float, j: float) -> tuple[float, float]:
            i, j = i + shift, j + shift
            return m[0] * i + m[1] * j + m[3], m[4] * i + m[5] * j + m[7]

    elif TAG_TIEPOINT in tags and TAG_PIXEL_SCALE in tags:
        tp = [float(v) for v in tags[TAG_TIEPOINT]]
        sc = [float(v) for v in tags[TAG_PIXEL_SCALE]]
        if len(tp) < 6 or len(sc) < 2:
            return None
        ti, tj, tx, ty = tp[0], tp[1], tp[3], tp[4]
        sx, sy = sc[0], sc[1]

        def at(i: float, j: float) -> tuple[float, float]:
            return tx + (i - ti + shift) * sx, ty - (j - tj + shift) * sy

    else:
        return None
    return [at(0, 0), at(width, 0), at(0, height), at(width, height)]


def to_lonlat(x: float, y: float, epsg: int) -> tuple[float, float] | None:
    """WGS84 ``(lon, lat)`` of a point given in EPSG:4326, UTM (326xx/327xx) or 3857; else None.

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
