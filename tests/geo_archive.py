"""A small archive of real GeoTIFFs with known footprints and times, plus a CSV manifest (issue 22).

:func:`make_geo_archive` writes, from the shipped EuroSAT sample's pixels:

- GeoTIFFs in EPSG:4326, two UTM zones (31N at Paris; 60S at Fiji, crossing the antimeridian),
  a 320 km UTM 33N scene whose edges curve in lon/lat, Lambert-93 (EPSG:2154, centred on the
  projection's origin 3°E 46.5°N), the British National Grid (EPSG:27700), an Antarctic polar
  stereographic scene (EPSG:3031) holding the south pole, a 4326 scene across 180°, one in a
  CRS no database knows and one without georeferencing; several carry DateTime or EXIF
  DateTimeOriginal tags.
- ``manifest.csv`` (``path,label,lon,lat,west,south,east,north,time``): rows with a point, rows
  with a box (some across the antimeridian), rows with a time only, rows with nothing.

**Known footprints** are computed here by routes independent of :mod:`rsir_sdk.georef`: boxes
written in EPSG:4326 are exact by construction; UTM outlines are converted by the hand-written
Snyder series (:func:`rsir_sdk.georef.to_lonlat`, not pyproj) at 1025 points per edge; other
CRSs by pyproj at 1025 points per edge (the reader samples 33), and Lambert-93's centre is the
projection's defining origin. Each item names the tolerance, in metres, it is checked to.
"""

from __future__ import annotations

import csv
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DENSE = 1025


@dataclass(frozen=True)
class GeoItem:
    """A generated GeoTIFF and what a reader must find in it."""

    path: Path
    crs: str | None
    box: tuple[float, float, float, float] | None  # west, south, east, north (west > east: across 180)
    centre: tuple[float, float] | None
    time: str | None  # ISO 8601 UTC
    tol_m: float


def _geokeys(epsg: int, geographic: bool) -> tuple[int, ...]:
    model = 2 if geographic else 1
    return (1, 1, 0, 2, 1024, 0, 1, model, 2048 if geographic else 3072, 0, 1, epsg)


def write_geotiff(path: Path, pixels: np.ndarray, epsg: int, origin: tuple[float, float],
                  scale: float, datetime: str | None = None) -> None:
    """A north-up GeoTIFF: pixel (0, 0)'s corner at ``origin`` in EPSG ``epsg``, square pixels."""
    import tifffile

    geographic = epsg in (4326, 4258, 4269)
    tags = [(33550, "d", 3, (scale, scale, 0.0)), (33922, "d", 6, (0, 0, 0, origin[0], origin[1], 0)),
            (34735, "H", 12, _geokeys(epsg, geographic))]
    tifffile.imwrite(path, pixels, photometric="rgb", extratags=tags, datetime=datetime)


def add_exif_time(path: Path, text: str) -> None:
    """Append an EXIF IFD holding DateTimeOriginal (36867) to a little-endian classic TIFF that
    was written with a placeholder LONG tag 34700 (tifffile does not write 34665 itself), then
    turn the placeholder into the ExifIFD tag (34665, same sort position) pointing at it."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags[34700]
        entry_at, value_at = tag.offset, tag.valueoffset
    data = text.encode("ascii") + b"\x00"
    with open(path, "r+b") as fh:
        fh.seek(0, 2)
        ifd_at = fh.tell() + (fh.tell() % 2)
        fh.write(b"\x00" * (ifd_at - fh.tell()))
        data_at = ifd_at + 2 + 12 + 4
        fh.write(struct.pack("<HHHII", 1, 36867, 2, len(data), data_at) + struct.pack("<I", 0) + data)
        fh.seek(value_at)
        fh.write(struct.pack("<I", ifd_at))
        fh.seek(entry_at)
        fh.write(struct.pack("<H", 34665))


def _outline(x0: float, y0: float, w: float, h: float, n: int = DENSE) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 1.0, n)
    xs = np.concatenate([x0 + t * w, np.full(n, x0 + w), x0 + t[::-1] * w, np.full(n, x0)])
    ys = np.concatenate([np.full(n, y0), y0 - t * h, np.full(n, y0 - h), y0 - t[::-1] * h])
    return xs, ys


def _box_no_wrap(lons: np.ndarray, lats: np.ndarray) -> tuple[float, float, float, float]:
    return float(lons.min()), float(lats.min()), float(lons.max()), float(lats.max())


def _box_across_180(lons: np.ndarray, lats: np.ndarray) -> tuple[float, float, float, float]:
    east_side, west_side = lons[lons > 0], lons[lons < 0]
    return float(east_side.min()), float(lats.min()), float(west_side.max()), float(lats.max())


def _snyder(xs, ys, epsg):
    from rsir_sdk.georef import to_lonlat

    pts = np.array([to_lonlat(x, y, epsg) for x, y in zip(xs, ys)])
    return (pts[:, 0] + 180.0) % 360.0 - 180.0, pts[:, 1]


def _pyproj(xs, ys, epsg):
    from pyproj import Transformer

    return Transformer.from_crs(epsg, 4326, always_xy=True).transform(xs, ys)


def _scenes(sample_images) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p, _ in sample_images[::17]]


def make_geo_archive(root: Path, sample_images) -> tuple[list[GeoItem], Path]:
    """Write the GeoTIFFs and ``manifest.csv`` under ``root``; (their known items, the manifest)."""
    root.mkdir(parents=True, exist_ok=True)
    px = _scenes(sample_images)
    items: list[GeoItem] = []

    def add(name, i, epsg, origin, scale, box_fn, tol, time=None, exif=None, centre=None):
        path = root / name
        write_geotiff(path, px[i % len(px)], epsg, origin, scale, datetime=time)
        if exif:
            _rewrite_with_exif(path, px[i % len(px)], epsg, origin, scale, exif)
        w = h = 64 * scale
        box = c = None
        if box_fn is not None:
            xs, ys = _outline(origin[0], origin[1], w, h)
            to, boxer = box_fn
            lons, lats = to(xs, ys, epsg)
            box = boxer(np.asarray(lons), np.asarray(lats))
            clon, clat = to(np.array([origin[0] + w / 2]), np.array([origin[1] - h / 2]), epsg)
            c = centre or (float(clon[0]), float(clat[0]))
        t = exif or time
        iso = None if t is None else t.replace(":", "-", 2).replace(" ", "T") + "Z"
        items.append(GeoItem(path, f"EPSG:{epsg}" if epsg != 32767 else None, box, c, iso, tol))

    # EPSG:4326, 64 x 0.001 degrees: the box is exact by construction
    add("wgs84.tif", 0, 4326, (10.0, 50.0), 0.001, (_pyproj, _box_no_wrap), 0.05, time="2021:06:01 10:30:00")
    add("wgs84_across_180.tif", 1, 4326, (179.98, -16.5), 0.001, None, 0.05)
    items[-1] = GeoItem(items[-1].path, "EPSG:4326", (179.98, -16.564, -179.956, -16.5),
                        (-179.988, -16.532), None, 0.05)
    add("utm31n_paris.tif", 2, 32631, (448000.0, 5412000.0), 10.0, (_snyder, _box_no_wrap), 0.5,
        exif="2020:07:14 11:00:00")
    add("utm60s_fiji_across_180.tif", 3, 32760, (800000.0, 8100000.0), 625.0,
        (_snyder, _box_across_180), 1.0, time="2019:12:31 23:59:59")
    add("utm33n_large.tif", 4, 32633, (340000.0, 6800000.0), 5000.0, (_snyder, _box_no_wrap), 25.0)
    add("lambert93.tif", 5, 2154, (700000.0 - 3200, 6600000.0 + 3200), 100.0,
        (_pyproj, _box_no_wrap), 1.0, centre=(3.0, 46.5), time="2022:03:20 09:15:00")
    add("osgb.tif", 6, 27700, (530000.0, 180000.0), 20.0, (_pyproj, _box_no_wrap), 1.0)
    add("antarctic_pole.tif", 7, 3031, (-320000.0, 320000.0), 10000.0, None, 1.0)
    xs, ys = _outline(-320000.0, 320000.0, 640000.0, 640000.0)
    _, lats = _pyproj(xs, ys, 3031)
    items[-1] = GeoItem(items[-1].path, "EPSG:3031", (-180.0, -90.0, 180.0, float(np.max(lats))),
                        (0.0, -90.0), None, 25.0)
    add("unknown_crs.tif", 8, 9999, (0.0, 0.0), 1.0, None, 0.0)
    add("user_defined.tif", 9, 32767, (0.0, 0.0), 1.0, None, 0.0, time="2018:01:02 03:04:05")
    return items, _write_manifest(root, sample_images)


def _rewrite_with_exif(path, pixels, epsg, origin, scale, exif):
    import tifffile

    tags = [(33550, "d", 3, (scale, scale, 0.0)), (33922, "d", 6, (0, 0, 0, origin[0], origin[1], 0)),
            (34700, "I", 1, 0), (34735, "H", 12, _geokeys(epsg, epsg == 4326))]
    tifffile.imwrite(path, pixels, photometric="rgb", extratags=tags)
    add_exif_time(path, exif)


#: manifest rows beyond the sample's first images: (lon, lat, west, south, east, north, time)
MANIFEST_PLACES = [
    (2.2945, 48.8584, "", "", "", "", "2020-07-14T11:00:00Z"),
    ("", "", 170.0, -20.0, -170.0, -10.0, "2021-01-01"),
    ("", "", -180.0, 60.0, 180.0, 90.0, "2021-06-30T23:59:59+02:00"),
    (-0.1276, 51.5072, -0.2, 51.4, 0.0, 51.6, ""),
    ("", "", "", "", "", "", "2019-05-05T05:05:05Z"),
    ("", "", "", "", "", "", ""),
    (179.999, -17.0, "", "", "", "", "2022-02-02T02:02:02Z"),
    (-179.5, 0.0, 179.5, -1.0, -179.0, 1.0, "2023-12-31T12:00:00Z"),
]


def _write_manifest(root: Path, sample_images) -> Path:
    out = root / "manifest.csv"
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "lon", "lat", "west", "south", "east", "north", "time"])
        for (path, label), place in zip(sample_images, MANIFEST_PLACES):
            w.writerow([str(path), label, *place])
    return out
