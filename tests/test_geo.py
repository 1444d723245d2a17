"""Place and period (issue 22, groundwork): footprints of real GeoTIFFs in many CRSs, the exact
filters against brute force, the engine prefilter against the exact filter (Python and a real
Milvus Lite), and one-line errors for bad input."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from geo_archive import make_geo_archive

from rsir_sdk import geo, tiff
from rsir_sdk.errors import InvalidInputError
from rsir_sdk.geo import BBox, Footprint, GeoFilter, Near, Period
from rsir_sdk.georef import georeference, to_lonlat_many
from rsir_sdk.images import read_image
from testing.store_baseline import rows_matching

pytest.importorskip("tifffile")
pytest.importorskip("pyproj")

R = geo.EARTH_RADIUS_M
M_PER_DEG = R * math.pi / 180.0


@pytest.fixture(scope="module")
def archive(tmp_path_factory, sample_images):
    return make_geo_archive(tmp_path_factory.mktemp("geo_archive"), sample_images)


def _lon_gap_m(a: float, b: float, lat: float) -> float:
    d = abs((a - b + 180.0) % 360.0 - 180.0)
    return d * M_PER_DEG * max(math.cos(math.radians(lat)), 1e-12)


# ---------------------------------------------------------------- footprints of the archive

def test_footprints_read_back_equal_the_known_ones(archive):
    items, _ = archive
    crss = set()
    for it in items:
        g = read_image(it.path).georef
        assert g.get("crs") == it.crs, it.path.name
        assert g.get("time") == it.time, it.path.name
        if it.box is None:
            assert "lonlat_bounds" not in g, it.path.name
            continue
        crss.add(it.crs)
        fp = Footprint.of_metadata(g)
        w, s, e, n = it.box
        assert abs(fp.box.south - s) * M_PER_DEG <= it.tol_m, (it.path.name, fp.box, it.box)
        assert abs(fp.box.north - n) * M_PER_DEG <= it.tol_m, (it.path.name, fp.box, it.box)
        if (w, e) == (-180.0, 180.0):  # a pole inside: every longitude
            assert (fp.box.west, fp.box.east) == (-180.0, 180.0), it.path.name
        else:
            assert _lon_gap_m(fp.box.west, w, s) <= it.tol_m and _lon_gap_m(fp.box.east, e, s) <= it.tol_m, \
                (it.path.name, fp.box, it.box)
            assert fp.box.crosses_antimeridian == (w > e), it.path.name
        assert geo.haversine_m(*fp.centre, *it.centre) <= it.tol_m, (it.path.name, fp.centre, it.centre)
    assert {"EPSG:4326", "EPSG:32631", "EPSG:32760", "EPSG:2154", "EPSG:27700", "EPSG:3031"} <= crss


def test_dense_outline_covers_curved_edges(archive):
    """The 320 km UTM scene: its corners alone miss the north edge's bulge by kilometres."""
    items, _ = archive
    it = next(i for i in items if i.path.name == "utm33n_large.tif")
    fp = Footprint.of_metadata(read_image(it.path).georef)
    xs, ys = np.array([340000.0, 660000.0, 340000.0, 660000.0]), np.array([6800000.0] * 2 + [6480000.0] * 2)
    lons, lats = to_lonlat_many(xs, ys, 32633)
    assert (fp.box.north - lats.max()) * M_PER_DEG > 1000.0  # corners only: over 1 km too small
    assert abs(fp.box.north - it.box[3]) * M_PER_DEG <= it.tol_m


def test_times_from_datetime_and_exif_tags_by_both_readers(archive, monkeypatch):
    items, _ = archive
    by_name = {i.path.name: i for i in items}
    expected = {"wgs84.tif": "2021-06-01T10:30:00Z", "utm31n_paris.tif": "2020-07-14T11:00:00Z",
                "lambert93.tif": "2022-03-20T09:15:00Z", "osgb.tif": None}
    for name, t in expected.items():
        assert read_image(by_name[name].path).georef.get("time") == t, name
    monkeypatch.setattr(tiff, "tifffile_available", lambda: False)
    for name, t in expected.items():
        r = read_image(by_name[name].path)
        assert r.reader == "pillow" and r.georef.get("time") == t, name
    # DateTimeOriginal (acquisition) wins over DateTime; an unparsable date is no time
    assert georeference({306: "2001:01:01 00:00:00", 36867: "2002:02:02 02:02:02"}, 1, 1) == \
        {"time": "2002-02-02T02:02:02Z"}
    assert georeference({306: "yesterday"}, 1, 1) == {
        "time_error": "the date tag 'yesterday' is not a date and time (YYYY:MM:DD HH:MM:SS)"}
    # EXIF's own "unknown date" (zeros, or blanks) is no date, not a bad one
    assert georeference({306: "0000:00:00 00:00:00"}, 1, 1) == {}
    assert georeference({36867: "    :  :     :  :  "}, 1, 1) == {}


def test_unknown_crs_is_one_line_and_the_image_still_reads(archive):
    items, _ = archive
    it = next(i for i in items if i.path.name == "unknown_crs.tif")
    r = read_image(it.path)
    assert r.rgb.shape == (64, 64, 3)
    msg = r.georef["footprint_error"]
    assert "EPSG:9999" in msg and "\n" not in msg and "lonlat_bounds" not in r.georef
    with pytest.raises(InvalidInputError, match="unknown CRS EPSG:9999") as exc:
        to_lonlat_many([0.0], [0.0], 9999)
    assert "\n" not in str(exc.value)


def test_without_pyproj_the_fallback_converts_4326_utm_and_3857_only(archive, monkeypatch):
    """The hand-written fallback (no pyproj): the same UTM and 4326 footprints, across 180 too;
    other CRSs get no footprint and one line naming the extra."""
    from rsir_sdk import georef

    items, _ = archive
    by_name = {i.path.name: i for i in items}
    with_pyproj = {n: read_image(by_name[n].path).georef for n in ("utm60s_fiji_across_180.tif", "wgs84.tif")}
    monkeypatch.setattr(georef, "pyproj_available", lambda: False)
    for name, g in with_pyproj.items():
        fb = read_image(by_name[name].path).georef
        assert np.allclose(fb["lonlat_bounds"], g["lonlat_bounds"], rtol=0, atol=1e-6), name
        assert geo.haversine_m(*fb["lonlat"], *g["lonlat"]) < 0.01, name
    fb = read_image(by_name["lambert93.tif"].path).georef
    assert "lonlat_bounds" not in fb and "rsir-sdk[geo]" in fb["footprint_error"]
    assert fb["crs"] == "EPSG:2154" and fb["time"] == "2022-03-20T09:15:00Z"
    lon, lat = to_lonlat_many([20037508.342789244, 0.0], [0.0, 0.0], 3857)
    assert np.allclose(lon, [180.0, 0.0]) and np.allclose(lat, [0.0, 0.0])


def test_rotated_and_polar_outlines():
    """A ModelTransformation with rotation: the box holds the rotated outline, not the envelope
    of the corners' CRS box; a north polar scene spans every longitude up to 90."""
    c, s_ = math.cos(math.radians(30)), math.sin(math.radians(30))
    m = (0.001 * c, -0.001 * s_, 0, 10.0, -0.001 * s_, -0.001 * c, 0, 50.0, 0, 0, 0, 0, 0, 0, 0, 1)
    g = georeference({34264: m, 34735: (1, 1, 0, 1, 2048, 0, 1, 4326)}, 100, 100)
    corners = [(10.0, 50.0), (10.0 + 0.1 * c, 50.0 - 0.1 * s_), (10.0 - 0.1 * s_, 50.0 - 0.1 * c),
               (10.0 + 0.1 * c - 0.1 * s_, 50.0 - 0.1 * s_ - 0.1 * c)]
    want = [min(p[0] for p in corners), min(p[1] for p in corners),
            max(p[0] for p in corners), max(p[1] for p in corners)]
    assert np.allclose(g["lonlat_bounds"], want, rtol=0, atol=2e-7)
    polar = georeference({33550: (1000.0, 1000.0, 0.0), 33922: (0, 0, 0, -50000.0, 50000.0, 0),
                          34735: (1, 1, 0, 1, 3072, 0, 1, 3413)}, 100, 100)
    w, s, e, n = polar["lonlat_bounds"]
    assert (w, e, n) == (-180.0, 180.0, 90.0) and 89.0 < s < 89.7


def test_manifest_rows_give_places_and_times(archive):
    _, manifest = archive
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    got = [geo.place_of_columns(r, f"{manifest.name} row {i + 2}") for i, r in enumerate(rows)]
    fp, t = got[0]
    assert fp.box == BBox(2.2945, 48.8584, 2.2945, 48.8584) and t == geo.parse_time("2020-07-14T11:00:00Z")
    fp, t = got[1]
    assert fp.box.crosses_antimeridian and fp.centre == (180.0, -15.0)
    assert t == geo.parse_time("2021-01-01T00:00:00Z")
    fp, t = got[2]
    assert fp.box.width == 360.0 and t == geo.parse_time("2021-06-30T21:59:59Z")  # +02:00 → UTC
    fp, t = got[3]
    assert fp.centre == (-0.1276, 51.5072) and fp.box.west == -0.2 and t is None
    assert got[4] == (None, geo.parse_time("2019-05-05T05:05:05Z")) and got[5] == (None, None)
    fp, _ = got[7]
    assert fp.box.crosses_antimeridian and fp.centre == (-179.5, 0.0)


# ---------------------------------------------------------------- brute force, independent of geo.py

def _in_arc(lon, west, east):
    """Brute force: is the meridian ``lon`` on the arc from west eastwards to east (modular)."""
    width = (east - west) % 360.0
    if width == 0.0 and east != west:
        width = 360.0
    return (lon - west) % 360.0 <= width + 1e-12


def _arcs_meet(w1, e1, w2, e2):
    return _in_arc(w1, w2, e2) or _in_arc(w2, w1, e1)


def _bf_bbox(q, fp):
    b = fp.box
    return b.south <= q.north and b.north >= q.south and _arcs_meet(b.west, b.east, q.west, q.east)


def _unit(lon, lat):
    lon, lat = np.radians(lon), np.radians(lat)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def _boundary(box, n):
    """Points along a box's four edges (n per edge) and the largest angle between neighbours."""
    width = (box.east - box.west) % 360.0 or (360.0 if box.east != box.west else 0.0)
    t = np.linspace(0.0, 1.0, n)
    lons = np.concatenate([box.west + t * width, np.full(n, box.west), np.full(n, box.west + width),
                           box.west + t * width])
    lats = np.concatenate([np.full(n, box.south), box.south + t * (box.north - box.south),
                           box.south + t * (box.north - box.south), np.full(n, box.north)])
    step = math.radians(max(width, box.north - box.south)) / (n - 1)
    return _unit(lons, lats), step


def _bf_distance(near, fp, n=4001):
    """Brute force: 0 inside, else the smallest sampled angle to the edges; (metres, error bound)."""
    b = fp.box
    if b.south <= near.lat <= b.north and _in_arc(near.lon, b.west, b.east):
        return 0.0, 0.0
    pts, step = _boundary(b, n)
    cosang = np.clip(pts @ _unit(near.lon, near.lat), -1.0, 1.0)
    return float(np.arccos(cosang.max())) * R, step / 2 * R + 1e-3


def _random_footprints(rng, n):
    out = []
    for _ in range(n):
        kind = rng.random()
        t = None if rng.random() < 0.15 else float(rng.uniform(1.4e9, 1.8e9))
        if kind < 0.1:
            out.append(None if t is None else (None, t))
            continue
        lat = math.degrees(math.asin(rng.uniform(-1, 1)))
        lon = float(rng.uniform(-180, 180))
        if kind < 0.25:
            out.append((Footprint.of_point(lon, lat, t), t))
            continue
        width = float(10 ** rng.uniform(-4, 2.4)) if kind < 0.95 else 360.0
        height = float(10 ** rng.uniform(-4, 1.8))
        south = max(-90.0, lat - height / 2)
        north = min(90.0, lat + height / 2)
        west = (lon - width / 2 + 180.0) % 360.0 - 180.0 if width < 360 else -180.0
        east = (lon + width / 2 + 180.0) % 360.0 - 180.0 if width < 360 else 180.0
        out.append((Footprint.of_box((west, south, east, north), t), t))
    return [(None, None) if x is None else x for x in out]


@pytest.fixture(scope="module")
def population(archive):
    """Footprints of the archive's GeoTIFFs and manifest rows, plus 1500 seeded random ones."""
    items, manifest = archive
    pop = []
    for it in items:
        g = read_image(it.path).georef
        fp = Footprint.of_metadata(g)
        t = geo.parse_time(g["time"]) if "time" in g else None
        pop.append((fp, t))
    with open(manifest, newline="", encoding="utf-8") as fh:
        pop += [geo.place_of_columns(r, "row") for r in csv.DictReader(fh)]
    pop += _random_footprints(np.random.default_rng(22), 1500)
    return pop


def _random_box(rng, pop):
    k = rng.random()
    if k < 0.15:  # an edge shared with an item: inclusive bounds matter
        fp = next(f for f, _ in (pop[int(i)] for i in rng.integers(0, len(pop), 50)) if f is not None)
        return BBox(fp.box.east, fp.box.north, float(rng.uniform(-180, 180)), min(90.0, fp.box.north + 5))
    lat = math.degrees(math.asin(rng.uniform(-1, 1)))
    h, w = float(10 ** rng.uniform(-2, 2.2)), float(10 ** rng.uniform(-2, 2.5))
    if k > 0.95:
        w = 360.0
    lon = float(rng.uniform(-180, 180))
    west = (lon - w / 2 + 180.0) % 360.0 - 180.0 if w < 360 else -180.0
    east = (lon + w / 2 + 180.0) % 360.0 - 180.0 if w < 360 else 180.0
    return BBox(west, max(-90.0, lat - h), east, min(90.0, lat + h))


def test_bbox_filter_and_prefilter_equal_brute_force(population):
    rng = np.random.default_rng(7)
    rows = [geo.scalar_fields(fp, t) for fp, t in population]
    crossing = hits = 0
    for _ in range(300):
        q = _random_box(rng, population)
        f = GeoFilter(bbox=q)
        crossing += q.crosses_antimeridian
        for (fp, t), row in zip(population, rows):
            truth = fp is not None and _bf_bbox(q, fp)
            assert f.keep(fp, t) == truth, (q, fp)
            assert geo.matches(f.conditions(), row) == truth, (q, fp, row)  # exact in the engine
            hits += truth
    assert crossing >= 20 and 0 < hits < 300 * len(population)


def test_boxes_and_footprints_on_the_180th_meridian_meet_in_the_engine_as_in_python():
    """-180 and 180 are one meridian: a box whose east edge is 180 found nothing stored at
    -180 (a grid tile from -180, a point at -180) in the engine, though ``keep`` said yes."""
    edges = (-180.0, -179.0, 0.0, 179.0, 180.0)
    # (180, -180) left out: a box of no width or of every longitude, as one reads it
    boxes = [BBox(w, 5.0, e, 15.0) for w in edges for e in edges if (w, e) != (180.0, -180.0)]
    fps = [Footprint.of_box(b) for b in boxes] + [Footprint.of_point(x, 10.0) for x in edges]
    for q in boxes:
        f = GeoFilter(bbox=q)
        for fp in fps:
            truth = _bf_bbox(q, fp)
            assert f.keep(fp) == truth, (q, fp)
            assert geo.matches(f.conditions(), geo.scalar_fields(fp)) == truth, (q, fp)
    assert geo.matches(GeoFilter(bbox=BBox(179.0, 5.0, 180.0, 15.0)).conditions(),
                       geo.scalar_fields(Footprint.of_point(-180.0, 10.0)))


def test_distance_to_a_box_equals_dense_sampling():
    rng = np.random.default_rng(11)
    fps = [f for f, _ in _random_footprints(rng, 400) if f is not None]
    inside = 0
    for fp in fps:
        near = Near(float(rng.uniform(-180, 180)), math.degrees(math.asin(rng.uniform(-1, 1))), 0.0)
        if rng.random() < 0.3:  # a point close to the box
            near = Near(fp.box.west + float(rng.uniform(-0.5, 0.5)) if abs(fp.box.west) < 179.5 else fp.box.west,
                        min(90.0, max(-90.0, fp.centre[1] + float(rng.uniform(-1, 1)))), 0.0)
        d = near.distance(fp)
        bf, err = _bf_distance(near, fp)
        inside += bf == 0.0
        assert (d == 0.0) == (bf == 0.0), (near, fp)
        assert bf - err <= d <= bf + 1e-3, (near, fp, d, bf, err)
    assert inside >= 5
    # a known value: a quarter of the equator from a point box
    assert geo.haversine_m(0, 0, 90, 0) == pytest.approx(R * math.pi / 2, rel=1e-12)


def _random_near(rng):
    k = rng.random()
    lat = math.degrees(math.asin(rng.uniform(-1, 1)))
    if k < 0.15:
        lat = float(rng.choice([-1, 1]) * rng.uniform(85, 90))  # around a pole
    lon = float(rng.uniform(-180, 180))
    if 0.15 <= k < 0.3:
        lon = float(rng.choice([-1, 1]) * rng.uniform(179, 180))  # by the antimeridian
    return Near(lon, lat, float(10 ** rng.uniform(0, 7.3)))


def test_near_filter_agrees_with_brute_force_and_the_prefilter_misses_nothing(population):
    rng = np.random.default_rng(5)
    rows = [geo.scalar_fields(fp, t) for fp, t in population]
    placed = [i for i, (fp, _) in enumerate(population) if fp is not None]
    samples = [_boundary(population[i][0].box, 257) for i in placed]
    pts = np.stack([p for p, _ in samples])  # (items, 4 * 257, 3)
    err = np.array([step / 2 * R + 1e-3 for _, step in samples])
    kept = selected = undecided = total = 0
    for _ in range(120):
        q = _random_near(rng)
        f = GeoFilter(near=q)
        conds = f.conditions()
        bf = np.arccos(np.clip((pts @ _unit(q.lon, q.lat)).max(axis=1), -1.0, 1.0)) * R
        for (fp, t), row in zip(population, rows):
            keep, pre = f.keep(fp, t), geo.matches(conds, row)
            assert pre or not keep, (q, fp, row)  # the prefilter never drops a kept item
            assert fp is not None or not (keep or pre)
            selected += pre
            kept += keep
            total += 1
        for k, i in enumerate(placed):
            fp = population[i][0]
            d = 0.0 if fp.box.south <= q.lat <= fp.box.north and _in_arc(q.lon, fp.box.west, fp.box.east) else bf[k]
            if d > 0.0 and abs(d - q.metres) <= err[k]:
                undecided += 1  # within the sampling error of the radius: brute force cannot tell
                continue
            assert f.keep(fp) == (d <= q.metres), (q, fp, d)
    assert undecided <= 0.01 * total and 0.01 * total < kept < 0.9 * total, (undecided, kept, total)
    assert kept <= selected < 0.95 * total  # the prefilter box does select


def test_periods_and_combinations_agree_with_brute_force(population):
    rng = np.random.default_rng(3)
    rows = [geo.scalar_fields(fp, t) for fp, t in population]
    for i in range(120):
        a, b = sorted(rng.uniform(1.3e9, 1.9e9, 2))
        start, end = (None if i % 7 == 0 else float(a)), (None if i % 5 == 0 else float(b))
        period = Period(start, end)
        box = _random_box(rng, population) if i % 2 else None
        near = _random_near(rng) if i % 3 == 0 else None
        f = GeoFilter(box, near, period)
        conds = f.conditions()
        for (fp, t), row in zip(population, rows):
            in_time = t is not None and (start is None or t >= start) and (end is None or t <= end)
            in_box = box is None or (fp is not None and _bf_bbox(box, fp))
            in_near = near is None or (fp is not None and near.distance(fp) <= near.metres)
            keep = f.keep(fp, t)
            assert keep == (in_time and in_box and in_near), (f, fp, t)
            if keep:
                assert geo.matches(conds, row)
            if near is None:  # box and period: the prefilter is exact
                assert geo.matches(conds, row) == (in_time and in_box), (f, fp, t)


def test_rows_round_trip_and_rows_without_a_place_never_match(population):
    for fp, t in population:
        row = geo.scalar_fields(fp, t)
        assert set(row) == set(geo.FIELDS)
        back = geo.footprint_of_row(row)
        if fp is None:
            assert back is None
        else:
            assert back.centre == fp.centre and back.time == t
            assert np.allclose([back.box.west, back.box.south, back.box.east, back.box.north],
                               [fp.box.west, fp.box.south, fp.box.east, fp.box.north], rtol=0, atol=1e-12)
    empty = geo.scalar_fields(None, None)
    world = GeoFilter(BBox(-180, -90, 180, 90), Near(0, 0, 3e7), Period(None, None))
    for part in world.conditions():
        assert not geo.matches((part,), empty)
    assert geo.matches(world.conditions(), geo.scalar_fields(Footprint.of_point(180.0, 90.0, 0.0)))


def test_expressions_select_the_same_rows_in_milvus_lite(population, db_uri):
    """The expression strings run on a real Milvus Lite: the same ids as :func:`geo.matches`."""
    rows = [geo.scalar_fields(fp, t) for fp, t in population]
    rng = np.random.default_rng(9)
    filters = []
    for i in range(40):
        a, b = sorted(rng.uniform(1.3e9, 1.9e9, 2))
        f = GeoFilter(_random_box(rng, population) if i % 2 == 0 else None,
                      _random_near(rng) if i % 2 == 1 else None,
                      Period(None if i % 3 else float(a), float(b)) if i % 4 == 0 else None)
        if i == 0:  # literals that repr() writes in exponent notation
            f = GeoFilter(BBox(-1e-7, -90.0, 1e-7, 90.0), None, Period(None, 1e-5))
            assert "e-" not in f.expr()
        filters.append(f)
    got = rows_matching(db_uri, geo.FIELDS, rows, [f.expr() for f in filters])
    for f, ids in zip(filters, got):
        want = {j for j, r in enumerate(rows) if geo.matches(f.conditions(), r)}
        assert ids == want, f.expr()


# ---------------------------------------------------------------- bad input: one line each

@pytest.mark.parametrize("call, words", [
    (lambda: BBox.parse("10,20,11,10"), "bbox south (20) is north of bbox north (10)"),
    (lambda: BBox.parse((0, 0, 1, 91)), "bbox north must lie in [-90, 90]"),
    (lambda: BBox.parse("0,-95,1,1"), "bbox south must lie in [-90, 90]"),
    (lambda: BBox.parse("181,0,1,1"), "bbox west must lie in [-180, 180]"),
    (lambda: BBox.parse("0,0,1"), "bbox must be west,south,east,north (4 numbers)"),
    (lambda: BBox.parse("a,0,1,1"), "bbox west must be a number"),
    (lambda: BBox.parse("nan,0,1,1"), "bbox west must be finite"),
    (lambda: Near.parse("0,91,10"), "near lat must lie in [-90, 90]"),
    (lambda: Near.parse((0, 0, -1)), "near metres must be >= 0"),
    (lambda: Near.parse("0,0"), "near must be lon,lat,metres (3 numbers)"),
    (lambda: Period.parse("2021-13-01/2022-01-01"), "time start '2021-13-01' is not an ISO 8601 time"),
    (lambda: Period.parse(("2021-01-01", "next week")), "time end 'next week' is not an ISO 8601 time"),
    (lambda: Period.parse("2022-01-01/2021-01-01"), "time start (2022-01-01T00:00:00Z) is after"),
    (lambda: Period.parse(".."), "time must be 'start/end'"),
    (lambda: geo.place_of_columns({"west": "1", "south": "2", "east": "3"}, "m.csv row 4"),
     "m.csv row 4: half a box: north missing"),
    (lambda: geo.place_of_columns({"lon": "1", "lat": ""}, "m.csv row 5"), "m.csv row 5: half a point: lat missing"),
    (lambda: geo.place_of_columns({"lon": "1", "lat": "2", "time": "soon"}, "m.csv row 6"),
     "m.csv row 6: time 'soon' is not an ISO 8601 time"),
    (lambda: geo.place_of_columns({"west": "0", "south": "5", "east": "1", "north": "4"}, "m.csv row 7"),
     "m.csv row 7: bbox south (5) is north of bbox north (4)"),
    # west and east swapped: read as a box across 180 of 359.9 degrees (it was indexed so, and
    # found over Siberia, not in Berlin); a box across 180 up to 300 degrees wide is kept
    (lambda: geo.place_of_columns({"west": "13.4", "south": "52.5", "east": "13.3",
                                   "north": "52.6"}, "m.csv row 8"),
     "m.csv row 8: bbox west (13.4) is east of bbox east (13.3), which reads as a box across 180 "
     "of 359.9 degrees: west and east swapped?"),
    (lambda: to_lonlat_many([1.0], [2.0], 9999), "unknown CRS EPSG:9999"),
])
def test_bad_input_is_one_line_naming_the_argument(call, words):
    with pytest.raises(InvalidInputError) as exc:
        call()
    msg = str(exc.value)
    assert words in msg and "\n" not in msg, msg
    assert exc.value.__cause__ is None or exc.value.__suppress_context__


def test_time_parsing_forms():
    p = geo.parse_time
    assert p("2021-06-01T10:30:00Z") == p("2021-06-01T12:30:00+02:00") == 1622543400.0
    assert p("2021-06-01 10:30:00") == p("2021:06:01 10:30:00") == 1622543400.0  # no zone: UTC
    # a URL's query string makes "+02:00" " 02:00"; a TIFF DateTime may hold its date alone
    assert p("2021-06-01T12:30:00 02:00") == p("2021-06-01 12:30 0200") == 1622543400.0
    assert p("2021:06:01") == p("2021-06-01") and p("2021:06:01", end=True) == p("2021-06-01", end=True)
    assert p("2021") == p("2021-01") == p("2021-01-01") == 1609459200.0
    assert p("2021-02", end=True) == p("2021-03-01") - 1e-6
    assert p("2021-12-31", end=True) == p("2022") - 1e-6
    period = Period.parse("2021-06/..")
    assert period.contains(p("2030-01-01")) and not period.contains(p("2021-05-31T23:59:59Z"))
    assert not period.contains(None)
    assert geo.iso(p("1999-12-31T23:59:59Z")) == "1999-12-31T23:59:59Z"
    # the basic and week forms are dates too: as an end they cover the whole day (week); they
    # read as midnight, so "20210501/20210601" missed everything on 1 June after 00:00
    assert p("20210601") == p("2021-06-01") and p("20210601", end=True) == p("2021-06-02") - 1e-6
    assert p("2021-W22") == p("2021-05-31") and p("2021-W22", end=True) == p("2021-06-07") - 1e-6
    assert p("2021-W22-3", end=True) == p("2021-06-03") - 1e-6
    # one date, week, month or year alone is all of it
    assert Period.parse("2021-06") == Period(p("2021-06-01"), p("2021-07-01") - 1e-6)
    assert Period.parse("2021-W22") == Period(p("2021-05-31"), p("2021-06-07") - 1e-6)
    instant = Period.parse("2021-06-01T10:30:00Z")
    assert instant.start == instant.end == p("2021-06-01T10:30:00Z")


def test_a_manifest_box_across_180_is_kept_unless_it_reads_as_a_swap():
    for w, e, width in (("177", "-178", 5.0), ("100", "-60", 200.0)):  # Fiji; a polar swath
        fp, _ = geo.place_of_columns({"west": w, "south": "-19", "east": e, "north": "-16"},
                                     "m.csv row 2")
        assert fp is not None and fp.box.crosses_antimeridian
        assert fp.box.width == pytest.approx(width)
