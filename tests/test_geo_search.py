"""Searching within a place and a period (issue 22), end to end, against a brute-force check.

An archive of real GeoTIFFs in several CRSs (two UTM zones, EPSG:4326, Lambert-93, the British
National Grid, an Antarctic polar one, two across the antimeridian; :mod:`geo_archive`), a CSV
manifest of sample images with points, boxes and times, and a few hundred seeded codes with
random footprints (boxes, some across 180°, points, none) and times, written both through
``footprints=``/``times=`` and through georeferencing metadata, are indexed into a real Milvus
Lite file and a real Milvus 2.3.5 server. For seeded random boxes (some across the
antimeridian), points with radii and periods, every filtered search with k = everything must
return exactly the items a plain Python check over all items finds (nothing inside missed,
nothing outside returned), in the store's exact order (the unfiltered order restricted to them),
and a small k must give the first k of them; through Python and through ``rsir search --json``.
Bad input is one line and writes nothing; a collection made before place fields refuses a place
filter with one line.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from geo_archive import MANIFEST_PLACES, make_geo_archive

from rsir_sdk import Retriever
from rsir_sdk.cli import main
from rsir_sdk.errors import CollectionMismatchError, InvalidInputError
from rsir_sdk.geo import GeoFilter
from rsir_sdk.store import MilvusCodeStore, tie_order
from testing.store_baseline import make_format2_collection

pytest.importorskip("pyproj")

R_EARTH = 6_371_008.8
N_SYNTH = 240
T0 = datetime(2015, 1, 1, tzinfo=timezone.utc).timestamp()
T1 = datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp()


# --------------------------------------------------------------------------- the world
def _epoch(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    text = text.strip()
    if len(text) == 10:
        text += "T00:00:00"
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _synthetic(rng: np.random.Generator) -> list[dict]:
    """Seeded items: a box (a third across 180°), a point, or nothing; a time or none."""
    out = []
    for i in range(N_SYNTH):
        kind = i % 4
        if kind == 0:
            box = None
        elif kind == 1:  # a point
            lon, lat = float(rng.uniform(-180, 180)), float(rng.uniform(-85, 85))
            box = (lon, lat, lon, lat)
        else:
            s = float(rng.uniform(-80, 70))
            n = s + float(rng.uniform(0.01, 15))
            w = float(rng.uniform(-180, 180))
            width = float(rng.uniform(0.01, 20))
            e = w + width
            box = (w, s, e - 360.0 if e > 180 else e, n)
            if i % 12 == 2:  # force some across the antimeridian
                box = (float(rng.uniform(165, 179.9)), s, float(rng.uniform(-179.9, -165)), n)
        t = None if i % 5 == 0 else float(np.round(rng.uniform(T0, T1)))
        out.append({"id": f"syn/{i:03d}", "box": box, "time": t, "margin": 0.0})
    return out


def _fill(r: Retriever, world: dict) -> None:
    """Index the GeoTIFFs and the manifest, and write the synthetic codes (half with explicit
    footprints and times, half through georeferencing metadata)."""
    s1 = r.index(world["archive"])
    s2 = r.index(world["manifest"])
    assert s1.ok and s2.ok and s1.indexed == len(world["tiffs"]) and s2.indexed == len(MANIFEST_PLACES)
    syn = world["synthetic"]
    explicit = [x for i, x in enumerate(syn) if i % 2 == 0]
    via_meta = [x for i, x in enumerate(syn) if i % 2 == 1]
    codes = world["codes"]
    r.add_codes(codes[0::2], [x["id"] for x in explicit], labels=["explicit"] * len(explicit),
                footprints=[x["box"] for x in explicit], times=[x["time"] for x in explicit])
    meta = []
    for x in via_meta:
        m = {} if x["box"] is None else {"lonlat_bounds": list(x["box"])}
        if x["time"] is not None:
            m["time"] = _iso(x["time"])
        meta.append(m)
    r.add_codes(codes[1::2], [x["id"] for x in via_meta], labels=["meta"] * len(via_meta),
                metadata=meta)


@pytest.fixture(scope="module")
def world(tmp_path_factory, sample_images, rp_bundle):
    root = tmp_path_factory.mktemp("geo_search")
    tiffs, manifest = make_geo_archive(root / "archive", sample_images)
    truth = []
    for it in tiffs:
        lat = 0.0 if it.box is None else max(abs(it.box[1]), abs(it.box[3]))
        margin = (it.tol_m * 3 + 20) / 111_000 / max(math.cos(math.radians(min(lat, 89))), 0.02)
        truth.append({"id": it.path.name, "box": it.box, "time": _epoch(it.time), "margin": margin})
    for (path, _), row in zip(sample_images, MANIFEST_PLACES):
        lon, lat, w, s, e, n, t = row
        box = (w, s, e, n) if w != "" else ((lon, lat, lon, lat) if lon != "" else None)
        truth.append({"id": str(path), "box": box, "time": _epoch(t), "margin": 0.0})
    rng = np.random.default_rng(22)
    synthetic = _synthetic(rng)
    world = {"archive": root / "archive", "manifest": manifest, "tiffs": tiffs,
             "synthetic": synthetic, "truth": truth + synthetic,
             "codes": rng.integers(0, 256, (N_SYNTH, 8), dtype=np.uint8),
             "bundle": rp_bundle[0], "db": str(root / "geo.db")}
    with Retriever(rp_bundle[0], uri=world["db"], collection="geo") as r:
        _fill(r, world)
        assert r.count() == len(world["truth"])
    return world


# --------------------------------------------------------------------------- the brute force
def _arcs(w: float, e: float) -> list[tuple[float, float]]:
    return [(w, e)] if w <= e else [(w, 180.0), (-180.0, e)]


def _lon_meet(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return any(a0 + sh <= b1 and b0 <= a1 + sh
               for a0, a1 in _arcs(*a) for b0, b1 in _arcs(*b) for sh in (-360.0, 0.0, 360.0))


def _meets(box, q) -> bool:
    w, s, e, n = box
    qw, qs, qe, qn = q
    return s <= qn and qs <= n and _lon_meet((w, e), (qw, qe))


def _grown(box, m: float):
    w, s, e, n = box
    if m == 0:
        return box
    full = (e - w) % 360 + 2 * m >= 360 or (w == -180 and e == 180)
    return ((-180.0, max(s - m, -90), 180.0, min(n + m, 90)) if full else
            ((w - m + 540) % 360 - 180, max(s - m, -90), (e + m + 540) % 360 - 180, min(n + m, 90)))


def _shrunk(box, m: float):
    w, s, e, n = box
    if m == 0:
        return box
    if (w, e) == (-180.0, 180.0):
        return (w, min(s + m, n), e, max(n - m, s))
    cw, cs = (w + ((e - w) % 360) / 2 + 540) % 360 - 180, (s + n) / 2
    if (e - w) % 360 <= 2 * m or n - s <= 2 * m:
        return (cw, cs, cw, cs)
    return ((w + m + 540) % 360 - 180, s + m, (e - m + 540) % 360 - 180, n - m)


def _hav(lon1, lat1, lon2, lat2):
    p1, p2 = np.radians(lat1), np.radians(lat2)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    return 2 * R_EARTH * np.arcsin(np.minimum(1.0, np.sqrt(h)))


def _distance(lon: float, lat: float, box) -> float:
    """Metres from the point to the box: 0 inside, else the nearest of densely sampled edges
    (an upper bound, a little above the truth)."""
    w, s, e, n = box
    if s <= lat <= n and _lon_meet((w, e), (lon, lon)):
        return 0.0
    width = (e - w) % 360 if (w, e) != (-180.0, 180.0) else 360.0
    t = np.linspace(0.0, 1.0, 721)
    lons = (w + t * width + 540) % 360 - 180
    lats = s + t * (n - s)
    pts_lon = np.concatenate([lons, lons, np.full_like(t, w), np.full_like(t, e)])
    pts_lat = np.concatenate([np.full_like(t, s), np.full_like(t, n), lats, lats])
    return float(_hav(lon, lat, pts_lon, pts_lat).min())


def _truth(item: dict, bbox=None, near=None, period=None) -> bool | None:
    """Whether the item passes (None: too close to a boundary to say, given its tolerance)."""
    if period is not None:
        t = item["time"]
        if t is None or not ((period[0] is None or t >= period[0]) and (period[1] is None or t <= period[1])):
            return False
    if bbox is None and near is None:
        return True
    box = item["box"]
    if box is None:
        return False
    verdicts = set()
    for b, slack in ((_grown(box, item["margin"]), -1), (_shrunk(box, item["margin"]), 1)):
        ok = True
        if bbox is not None:
            ok = _meets(b, bbox)
        if ok and near is not None:
            d = _distance(near[0], near[1], b)
            tol = 0.01 * near[2] + 5000 + item["margin"] * 111_000
            if abs(d - near[2]) <= tol:
                return None
            ok = d <= near[2]
        verdicts.add(ok)
    return verdicts.pop() if len(verdicts) == 1 else None


def _check(world: dict, got: list[str], **q) -> tuple[int, int]:
    """Assert the hit ids are exactly the items passing the brute force; (passing, ambiguous)."""
    got_set = set(got)
    assert len(got_set) == len(got), "an item came back twice"
    inside, unsure = 0, 0
    for item in world["truth"]:
        v = _truth(item, **q)
        if v is None:
            unsure += 1
        elif v:
            inside += 1
            assert item["id"] in got_set, f"{item['id']} passes {q} but was not returned"
        else:
            assert item["id"] not in got_set, f"{item['id']} fails {q} but was returned"
    return inside, unsure


# --------------------------------------------------------------------------- the queries
def _queries(seed: int, n: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out: list[dict] = [
        {"bbox": (2.0, 48.0, 3.0, 49.0)},  # Paris: a point and a UTM 31N scene
        {"bbox": (179.0, -18.0, -179.0, -16.0)},  # across 180: Fiji, 4326 across, a point
        {"bbox": (-180.0, -90.0, 180.0, -80.0)},  # the south pole
        {"near": (2.2945, 48.8584, 1000.0)},
        {"near": (180.0, -17.0, 50_000.0)},
        {"near": (0.0, -90.0, 100_000.0)},
        {"period": ("2020-07-14T11:00:00Z", "2020-07-14T11:00:00Z")},
        {"period": (None, "2019-12-31T23:59:59Z")},
    ]
    for i in range(n):
        kind = i % 3
        if kind == 0:
            s = float(rng.uniform(-90, 80))
            n_ = min(90.0, s + float(rng.uniform(1, 60)))
            w = float(rng.uniform(-180, 180))
            e = float(rng.uniform(-180, 180)) if i % 2 else (w + float(rng.uniform(1, 90)) + 540) % 360 - 180
            out.append({"bbox": (w, s, e, n_)})
        elif kind == 1:
            out.append({"near": (float(rng.uniform(-180, 180)), float(rng.uniform(-89, 89)),
                                 float(rng.choice([5e4, 5e5, 2e6, 5e6])))})
        else:
            a, b = sorted(rng.uniform(T0, T1, 2))
            out.append({"period": (_iso(a) if i % 4 else None, _iso(b))})
    for i in range(0, len(out) - 1, 4):  # a few combined
        out.append({**out[i], **out[i + 2]})
    return out


def _kw(q: dict) -> dict:
    out = {}
    if "bbox" in q:
        out["bbox"] = q["bbox"]
    if "near" in q:
        out["near"] = q["near"]
    if "period" in q:
        a, b = q["period"]
        out["time"] = f"{a or '..'}/{b or '..'}"
    return out


def _oracle_q(q: dict) -> dict:
    out = {k: q[k] for k in ("bbox", "near") if k in q}
    if "period" in q:
        out["period"] = tuple(_epoch(x) for x in q["period"])
    return out


def _run_queries(r: Retriever, world: dict, queries: list[dict], qcodes: np.ndarray) -> dict:
    total = len(world["truth"])
    seen = {"inside": 0, "unsure": 0, "empty": 0, "deeper": 0}
    full = [[h.id for h in row] for row in r.search_codes(qcodes, k=total)]
    for qi, q in enumerate(queries):
        code = qcodes[qi % len(qcodes) : qi % len(qcodes) + 1]
        order = full[qi % len(qcodes)]
        hits = r.search_codes(code, k=total, **_kw(q))[0]
        got = [h.id for h in hits]
        inside, unsure = _check(world, got, **_oracle_q(q))
        seen["inside"] += inside
        seen["unsure"] += unsure
        seen["empty"] += not got
        assert got == [i for i in order if i in set(got)], "not in the store's exact order"
        assert r.count(**_kw(q)) == len(got)
        small = r.search_codes(code, k=3, **_kw(q))[0]
        assert [h.id for h in small] == got[:3]
        seen["deeper"] += "near" in q and len(got) >= 3
    return seen


def test_filtered_searches_equal_the_brute_force_on_milvus_lite(world):
    rng = np.random.default_rng(5)
    qcodes = rng.integers(0, 256, (4, 8), dtype=np.uint8)
    queries = _queries(7, 45)
    with Retriever(world["bundle"], uri=world["db"], collection="geo") as r:
        seen = _run_queries(r, world, queries, qcodes)
        info = r.info()
    # the checks were not vacuous: many items inside, few undecidable, most queries non-empty
    assert seen["inside"] > 300 and seen["unsure"] < seen["inside"] / 20, seen
    assert seen["empty"] < len(queries) / 2, seen
    no_place = sum(1 for x in world["truth"] if x["box"] is None)
    assert info["without_footprint"] == no_place and info["count"] == len(world["truth"])


def test_hits_carry_their_footprint_and_time(world):
    with Retriever(world["bundle"], uri=world["db"], collection="geo") as r:
        hits = r.search(world["archive"] / "utm60s_fiji_across_180.tif", k=len(world["truth"]))
        combined = r.search(world["archive"] / "wgs84.tif", k=500, filter={"label": "explicit"},
                            radius=40, bbox=(-180, -90, 180, 90), time="2016-01-01/..")
    by_id = {h.id: h for h in hits}
    for it in world["tiffs"]:
        h = by_id[it.path.name]
        assert h.time == it.time
        if it.box is None:
            assert h.footprint is None
        else:
            assert h.footprint[0] > h.footprint[2] if it.box[0] > it.box[2] else h.footprint[0] <= h.footprint[2]
            assert np.allclose(h.footprint[1::2], it.box[1::2], atol=1e-3)
    syn = {x["id"]: x for x in world["synthetic"]}
    want = [x["id"] for i, x in enumerate(world["synthetic"]) if i % 2 == 0 and x["box"] is not None
            and x["time"] is not None and x["time"] >= _epoch("2016-01-01")]
    assert combined and all(h.distance <= 40 and h.label == "explicit" for h in combined)
    assert {h.id for h in combined} <= set(want)
    for h in combined:
        assert np.allclose(h.footprint, syn[h.id]["box"]) and h.time == _iso(syn[h.id]["time"])


def test_get_returns_the_place_and_period_a_hit_has(world):
    """An item's place and period could be read from a search hit, not from get()."""
    with Retriever(world["bundle"], uri=world["db"], collection="geo") as r:
        hits = r.search(world["archive"] / "wgs84.tif", k=50)
        items = r.get([h.id for h in hits])
    assert [i.id for i in items] == [h.id for h in hits]
    assert any(h.footprint is not None for h in hits) and any(h.time for h in hits)
    for h, it in zip(hits, items):
        assert (it.footprint, it.time) == (h.footprint, h.time)
        assert it == items[items.index(it)]            # == compares the code's bytes, no error
    first, second = items[0], items[1]
    assert first != second and first in items and second not in items[:1]


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_search_with_place_and_period_equals_python_and_the_brute_force(world, capsys):
    image = world["archive"] / "lambert93.tif"
    total = len(world["truth"])
    cases = [{"bbox": (170.0, -30.0, -170.0, 0.0)}, {"near": (3.0, 46.5, 2_000_000.0)},
             {"period": ("2019-01-01T00:00:00Z", None), "bbox": (-180.0, 0.0, 180.0, 90.0)}]
    for q in cases:
        args = []
        kw = _kw(q)
        for name in ("bbox", "near"):
            if name in kw:
                args.append(f"--{name}={','.join(repr(float(v)) for v in kw[name])}")
        if "time" in kw:
            args.append(f"--time={kw['time']}")
        code, out, err = _cli(capsys, "search", world["bundle"], image, "--uri", world["db"],
                              "--collection", "geo", "-k", total, "--json", *args)
        assert code == 0, err
        got = [h["id"] for h in json.loads(out)]
        assert all("footprint" in h and "time" in h for h in json.loads(out))
        with Retriever(world["bundle"], uri=world["db"], collection="geo") as r:
            assert got == [h.id for h in r.search(image, k=total, **kw)]
        inside, _ = _check(world, got, **_oracle_q(q))
        assert inside > 0 and len(got) > 0
    code, out, _ = _cli(capsys, "collections", "--uri", world["db"], "--json")
    no_place = sum(1 for x in world["truth"] if x["box"] is None)
    assert code == 0 and json.loads(out)[0]["without_footprint"] == no_place
    code, out, _ = _cli(capsys, "collections", "--uri", world["db"])
    assert code == 0 and "no place" in out and out.splitlines()[1].split()[-1] == str(no_place)
    # a place search that finds nothing says how many items no place filter can return
    code, out, err = _cli(capsys, "search", world["bundle"], image, "--uri", world["db"],
                          "--collection", "geo", "--bbox=-40.0,-50.0,-39.99,-49.99")
    assert code == 0 and out.strip() == "no hits" and no_place > 0
    assert f"{no_place} of {total} items have no footprint" in err, err
    # and a period search: how many items have no time (no period filter returns them)
    untimed = sum(1 for x in world["truth"] if x["time"] is None)
    code, out, err = _cli(capsys, "search", world["bundle"], image, "--uri", world["db"],
                          "--collection", "geo", "--time=1800/1801")
    assert code == 0 and out.strip() == "no hits" and untimed > 0
    assert f"{untimed} of {total} items have no time" in err and "footprint" not in err, err
    for bad, why in (("--bbox=1,2,3", "--bbox"), ("--near=0,0,-5", "near metres"),
                     ("--time=soon", "--time"), ("--bbox=0,10,5,5", "south")):
        code, out, err = _cli(capsys, "search", world["bundle"], image, "--uri", world["db"],
                              "--collection", "geo", bad)
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1 and why in lines[0] and out == "", (bad, err)


def test_rsir_index_counts_images_whose_georeferencing_gave_no_footprint(world, tmp_path, capsys):
    """An unknown CRS (or one that needs pyproj) leaves an image without a footprint: a place
    search never returns it, so the index summary says how many, and why, at once."""
    from rsir_sdk import read_image

    expected: dict[str, int] = {}
    for it in world["tiffs"]:
        why = read_image(it.path).georef.get("footprint_error")
        if why:
            expected[why] = expected.get(why, 0) + 1
    assert expected and sum(expected.values()) < len(world["tiffs"])
    db = str(tmp_path / "count.db")
    code, out, err = _cli(capsys, "index", world["bundle"], world["archive"], "--uri", db,
                          "--collection", "c", "--no-progress")
    assert code == 0, err
    n = sum(expected.values())
    assert re.search(rf"no place\s+{n} indexed with georeferencing that gave no footprint", out), out
    assert all(why[:150] in out for why in expected), out
    code, out, err = _cli(capsys, "index", world["bundle"], world["archive"], "--uri",
                          str(tmp_path / "count2.db"), "--collection", "c", "--json")
    assert code == 0 and json.loads(out)["footprint_errors"] == expected


def _photo(path, sample, gps=None, when=None, broken_time=None):
    """A JPEG of ``sample`` with EXIF as a drone or phone writes it."""
    from PIL import Image

    exif = Image.Exif()
    if when or broken_time:
        exif[306] = broken_time or when
        if when:
            exif.get_ifd(0x8769)[36867] = when
    if gps:
        ifd = exif.get_ifd(0x8825)
        (ifd[1], ifd[2]), (ifd[3], ifd[4]) = gps
    Image.open(sample).convert("RGB").save(path, exif=exif)


def test_photos_exif_position_and_time_and_dates_that_are_not_dates(world, tmp_path, capsys):
    """A drone JPEG's EXIF GPS position and time were ignored (the same tags in a TIFF were
    read), so it left every place and period search; a TIFF date tag that does not parse was
    dropped without a trace. Now a point footprint and a time, and `no time` in the summary."""
    import shutil

    from rsir_sdk import Retriever

    sample = world["tiffs"][0].path.parent
    src = [p for p in sorted(sample.rglob("*.tif"))][:2]
    root = tmp_path / "photos"
    root.mkdir()
    _photo(root / "drone.jpg", src[0], (("N", (43.0, 36.0, 0.0)), ("W", (1.0, 26.0, 24.0))),
           "2021:06:01 10:30:00")
    _photo(root / "nofix.jpg", src[0], (("N", (0.0, 0.0, 0.0)), ("E", (0.0, 0.0, 0.0))))
    _photo(root / "baddate.jpg", src[1], broken_time="2021:13:45 99:00:00")
    shutil.copy(src[1], root / "plain.tif")
    db = str(tmp_path / "photos.db")
    code, out, err = _cli(capsys, "index", world["bundle"], root, "--uri", db, "--collection",
                          "p", "--no-progress")
    assert code == 0, err
    assert re.search(r"no time\s+1 indexed with a date tag that is not a date", out), out
    assert "'2021:13:45 99:00:00' is not a date" in out
    assert re.search(r"no place\s+1 .*\n.*0, 0 \(a camera without a fix\)", out), out
    with Retriever(world["bundle"], uri=db, collection="p") as r:
        got = {i.id: i for i in r.get(["drone.jpg", "baddate.jpg"])}
        assert got["drone.jpg"].footprint[:2] == pytest.approx((-1.44, 43.6))
        assert got["drone.jpg"].time == "2021-06-01T10:30:00Z"
        assert r.count(near=(-1.44, 43.6, 100)) == 1
        assert r.count(time="2021-06") == 1
        assert "time_error" in got["baddate.jpg"].metadata
    code, out, err = _cli(capsys, "index", world["bundle"], root, "--uri",
                          str(tmp_path / "json.db"), "--collection", "p", "--json")
    assert json.loads(out)["time_errors"] == {
        "the date tag '2021:13:45 99:00:00' is not a date and time (YYYY:MM:DD HH:MM:SS)": 1}


def test_bad_footprints_times_and_filters_are_one_line_and_write_nothing(world, tmp_path, capsys):
    db = str(tmp_path / "bad.db")
    codes = world["codes"][:3]
    with Retriever(world["bundle"], uri=db, collection="bad") as r:
        for fps, times, why in (
            ([(1.0, 2.0, 3.0), None, None], None, "id 'a'"),           # 3 numbers: half a box
            ([None, (0.0, 95.0), None], None, "[-90, 90]"),             # latitude past 90
            ([None, None, (0.0, 10.0, 5.0, 5.0)], None, "south"),       # south > north
            (None, [None, "soon", None], "not an ISO 8601 time"),
            ([None, None], None, "3 items but 2 footprints"),
        ):
            with pytest.raises(InvalidInputError) as exc:
                r.add_codes(codes, ["a", "b", "c"], footprints=fps, times=times)
            assert "\n" not in str(exc.value) and why in str(exc.value), str(exc.value)
            with pytest.raises(InvalidInputError) as exc:
                r.add_images([world["archive"] / "wgs84.tif"] * 3, ids=["a", "b", "c"],
                             footprints=fps, times=times)
            assert why in str(exc.value)
        assert not r.store.exists and r.count() == 0  # nothing was written, nothing created
        r.add_codes(codes, ["a", "b", "c"], footprints=[(1, 2), None, (10, 20, 11, 21)])
        for kw, why in (({"bbox": "1,2,3"}, "bbox"), ({"near": (0, 0)}, "near"),
                        ({"time": "2021-13-01/.."}, "time start"), ({"bbox": (0, -91, 1, 1)}, "south")):
            with pytest.raises(InvalidInputError) as exc:
                r.search_codes(codes[:1], k=2, **kw)
            assert "\n" not in str(exc.value) and why in str(exc.value), str(exc.value)
            with pytest.raises(InvalidInputError):
                r.count(**kw)
        assert r.count(bbox=(0, 0, 180, 90)) == 2 and r.count(near=(1, 2, 0)) == 1
    # a manifest row with half a box: one line naming the row, exit 2 or 1, nothing written
    manifest = tmp_path / "half.csv"
    img = world["archive"] / "wgs84.tif"
    manifest.write_text(f"path,west,south,east,north\n{img},1,2,3,4\n{img},1,2,,4\n")
    code, out, err = _cli(capsys, "index", world["bundle"], manifest, "--uri", db, "--collection",
                          "half", "--no-progress")
    lines = [x for x in err.splitlines() if x.strip()]
    assert code != 0 and len(lines) == 1 and "half.csv line 3" in lines[0] and "east" in lines[0], err
    with MilvusCodeStore(db, "half", bits=64) as store:
        assert not store.exists


def test_a_collection_made_before_place_fields_refuses_place_filters(world, tmp_path, capsys):
    db = str(tmp_path / "old.db")
    make_format2_collection(db, "old")
    codes = world["codes"][:4]
    with MilvusCodeStore(db, "old") as store:
        assert not store.has_place
        # plain writes and searches work as before (georeferencing metadata stays metadata)
        store.upsert(["a", "b", "c", "d"], codes, metadata=[{"lonlat_bounds": [1, 2, 3, 4]}] * 4)
        hits = store.search(codes[:1], k=4)[0]
        assert [h.id for h in hits][0] == "a" and hits[0].footprint is None and hits[0].time is None
        assert "without_footprint" not in store.info()
        for call in (lambda: store.search(codes[:1], k=2, geo=GeoFilter.of(bbox=(0, 0, 5, 5))),
                     lambda: store.count(geo=GeoFilter.of(time="2020/..")),
                     lambda: store.upsert(["e"], codes[:1], footprints=[(1, 2)])):
            with pytest.raises(CollectionMismatchError) as exc:
                call()
            text = str(exc.value)
            assert "\n" not in text and "rsir drop old" in text and "rebuild" in text, text
        assert store.count() == 4
    code, out, err = _cli(capsys, "search", world["bundle"], world["archive"] / "wgs84.tif",
                          "--uri", db, "--collection", "old", "--bbox=0,0,5,5")
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 1 and len(lines) == 1 and "rsir drop old" in lines[0], err
    code, out, err = _cli(capsys, "search", world["bundle"], world["archive"] / "wgs84.tif",
                          "--uri", db, "--collection", "old", "--json")
    assert code == 0 and len(json.loads(out)) == 4


def test_filtered_searches_equal_the_brute_force_on_the_server(world, server_uri, capsys):
    rng = np.random.default_rng(6)
    qcodes = rng.integers(0, 256, (3, 8), dtype=np.uint8)
    queries = _queries(8, 18)
    with Retriever(world["bundle"], uri=server_uri, collection="geo_search") as r:
        r.store.drop()
        _fill(r, world)
        r.prepare_for_search()
        seen = _run_queries(r, world, queries, qcodes)
        assert r.info()["without_footprint"] == sum(1 for x in world["truth"] if x["box"] is None)
        # the server agrees with Milvus Lite hit for hit
        with Retriever(world["bundle"], uri=world["db"], collection="geo") as lite:
            for q in queries[:8]:
                a = [(h.id, h.distance) for h in r.search_codes(qcodes[:1], k=50, **_kw(q))[0]]
                b = [(h.id, h.distance) for h in lite.search_codes(qcodes[:1], k=50, **_kw(q))[0]]
                assert a == b, q
        image, total = world["archive"] / "osgb.tif", len(world["truth"])
        code, out, err = _cli(capsys, "search", world["bundle"], image, "--uri", server_uri,
                              "--collection", "geo_search", "-k", total, "--json",
                              "--near=2.3,48.85,30000", "--time=2019-01-01/..")
        assert code == 0, err
        got = [h["id"] for h in json.loads(out)]
        assert got == [h.id for h in r.search(image, k=total, near=(2.3, 48.85, 30000),
                                              time="2019-01-01/..")]
        assert _check(world, got, near=(2.3, 48.85, 30000), period=(_epoch("2019-01-01"), None))[0] >= 2
        r.store.drop()
    assert seen["inside"] > 100 and seen["unsure"] < seen["inside"] / 20, seen


def test_bulk_loads_fill_the_place_fields_on_the_server(world, server_uri, tmp_path):
    from rsir_sdk.geo import Footprint

    syn = world["synthetic"]
    sub = {"truth": world["truth"][: len(world["tiffs"])] + syn}
    with Retriever(world["bundle"], uri=server_uri, collection="geo_bulk") as r:
        r.store.drop()
        s = r.index(world["archive"], bulk_dir=str(tmp_path / "stage"))
        assert s.ok and s.bulk is not None and s.indexed == len(world["tiffs"])
        fps = [None if x["box"] is None else Footprint.of_box(x["box"], x["time"]) for x in syn]
        meta = [{"time": _iso(x["time"])} if x["box"] is None and x["time"] is not None else {}
                for x in syn]
        out = r.store.bulk_insert([x["id"] for x in syn], world["codes"], metadata=meta,
                                  staging_dir=tmp_path / "stage2", footprints=fps)
        assert out["chunks"] >= 1 and out["count"] == len(sub["truth"])
        qcodes = world["codes"][:2]
        for q in _queries(9, 9):
            got = [h.id for h in r.search_codes(qcodes[:1], k=len(sub["truth"]), **_kw(q))[0]]
            _check(sub, got, **_oracle_q(q))
            assert r.count(**_kw(q)) == len(got)
        hits = {h.id: h for h in r.search_codes(qcodes[1:], k=len(sub["truth"]))[0]}
        for x in syn:
            h = hits[x["id"]]
            assert (h.footprint is None) == (x["box"] is None)
            assert h.time == (None if x["time"] is None else _iso(x["time"]))
        r.store.drop()


def test_near_goes_past_milvus_cap_and_stays_exact(tmp_path):
    """17,000 decoys at distance 0 lie in the engine's prefilter box but outside the circle;
    the five items within it are the farthest codes: found past the 16,384-hit cap, in order."""
    from rsir_sdk.geo import GeoFilter

    n = 17_000
    q = np.zeros((1, 8), np.uint8)
    codes = np.zeros((n + 5, 8), np.uint8)
    codes[n:] = 255  # distance 64
    codes[n + 4, 0] = 0  # distance 56: the nearest of the five
    ids = [f"decoy/{i}" for i in range(n)] + [f"real/{i}" for i in range(5)]
    # near (0, 89, 100 km): the engine's box spans about +-64 degrees of longitude at 88.1..89.9
    fps = [(60.0, 88.2)] * n + [(0.0, 89.0 + 0.1 * i) for i in range(5)]
    with MilvusCodeStore(str(tmp_path / "cap.db"), "cap", bits=64) as store:
        store.insert(ids, codes, footprints=fps)
        near = GeoFilter.of(near=(0.0, 89.0, 100_000.0))
        assert store.count(geo=GeoFilter.of(bbox=near.near.enclosing_box())) == n + 5
        hits = store.search(q, k=5, geo=near)[0]
        assert [h.distance for h in hits] == [56, 64, 64, 64, 64] and hits[0].id == "real/4"
        tied = [f"real/{i}" for i in range(4)]
        assert [h.id for h in hits[1:]] == [tied[i] for i in tie_order(tied)]
        assert store.search_stats["range_searches"] > 16  # it read past the cap, by distance
        assert store.count(geo=near) == 5


def test_the_ray_engine_stores_the_same_places(world, tmp_path):
    pytest.importorskip("ray")
    from rsir_sdk.options import RayOptions

    db = str(tmp_path / "ray.db")
    with Retriever(world["bundle"], uri=db, collection="on_ray") as r:
        s = r.index(world["archive"], workers=1, engine="ray", ray=RayOptions(threads_per_worker=1))
        assert s.ok and s.indexed == len(world["tiffs"])
        assert s.unplaced == sum("footprint_error" in h.metadata for h in
                                 r.search_codes(world["codes"][:1], k=100)[0]) > 0
        on_ray = {h.id: (h.footprint, h.time) for h in r.search_codes(world["codes"][:1], k=100)[0]}
        got = [h.id for h in r.search_codes(world["codes"][:1], k=100, bbox=(170, -20, -170, -10))[0]]
    with Retriever(world["bundle"], uri=world["db"], collection="geo") as r:
        local = {h.id: (h.footprint, h.time) for h in r.search_codes(world["codes"][:1], k=500)[0]}
    assert on_ray == {i: local[i] for i in on_ray} and len(on_ray) == len(world["tiffs"])
    assert sorted(got) == ["utm60s_fiji_across_180.tif", "wgs84_across_180.tif"]


def test_the_vectorised_write_path_stores_what_the_per_item_path_stores():
    """Plain boxes/points/epoch times take a numpy path: the same fields, to the bit, as the
    per-item path (given the same places as Footprint objects), edges and 180 included."""
    from rsir_sdk.geo import Footprint
    from rsir_sdk.store import place

    rng = np.random.default_rng(3)
    n = 3000
    lon = lambda: float(rng.choice([-180.0, 180.0, 0.0, rng.uniform(-180, 180)]))  # noqa: E731
    fps: list = []
    for i in range(n):
        s = float(rng.choice([-90.0, rng.uniform(-90, 90)]))
        fps.append(None if i % 5 == 0 else (lon(), s) if i % 5 == 1 else
                   (lon(), s, lon(), float(rng.choice([90.0, rng.uniform(s, 90)]))))
    ts = [None if i % 3 == 0 else float(rng.uniform(-1e9, 2e9)) for i in range(n)]
    ids = [f"i{i}" for i in range(n)]
    objects = [None if f is None else Footprint.of_point(*f) if len(f) == 2 else Footprint.of_box(f)
               for f in fps]
    fast = place.columns(ids, [None] * n, fps, ts)
    assert place._vectorised(fps, ts, [None] * n) is not None
    assert np.array_equal(fast, place.columns(ids, [None] * n, objects, ts))
    # metadata fills what the arguments leave out, per item
    meta = [{"time": "2020-01-01T00:00:00Z"}] * n
    mixed = place.columns(ids, meta, fps, ts)
    assert np.array_equal(mixed[1::3, :6], fast[1::3, :6])
    assert (mixed[0::3, 6] == _epoch("2020-01-01T00:00:00Z")).all()


def _popcount(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)


def _http_matches_local(world: dict, url: str, local: Retriever, queries: list[dict],
                        qcodes: np.ndarray, lite: Retriever | None = None) -> dict:
    """For each query: RemoteRetriever and raw HTTP against ``url`` give exactly the local
    Retriever's hits (every field), which are the brute force's items in the store's order,
    with the synthetic codes' true Hamming distances; counts agree everywhere."""
    import httpx

    from rsir_sdk.serve.client import RemoteRetriever

    total = len(world["truth"])
    syn_index = {x["id"]: i for i, x in enumerate(world["synthetic"])}
    seen = {"inside": 0, "unsure": 0, "empty": 0, "across": 0}
    with RemoteRetriever(url) as remote:
        assert remote.count() == local.count() == total
        full = [[h.id for h in row] for row in local.search_codes(qcodes, k=total)]
        assert [[h.id for h in row] for row in remote.search_codes(qcodes, k=total)] == full
        for qi, q in enumerate(queries):
            code = qcodes[qi % len(qcodes): qi % len(qcodes) + 1]
            kw = _kw(q)
            here = local.search_codes(code, k=total, **kw)[0]
            there = remote.search_codes(code, k=total, **kw)[0]
            assert there == here, (qi, q)                       # ids, distances, footprint, time
            got = [h.id for h in here]
            inside, unsure = _check(world, got, **_oracle_q(q))
            seen["inside"] += inside
            seen["unsure"] += unsure
            seen["empty"] += not got
            seen["across"] += "bbox" in q and q["bbox"][0] > q["bbox"][2] and bool(got)
            assert got == [i for i in full[qi % len(qcodes)] if i in set(got)], (qi, q)
            for h in here:
                if h.id in syn_index:
                    assert h.distance == int(_popcount(world["codes"][syn_index[h.id]], code[0])), h
            if lite is not None:
                assert [(h.id, h.distance) for h in lite.search_codes(code, k=total, **kw)[0]] == \
                    [(h.id, h.distance) for h in here], (qi, q)
            assert remote.search_codes(code, k=3, **kw)[0] == here[:3], (qi, q)
            assert remote.count(**kw) == local.count(**kw) == len(got), (qi, q)
            # raw HTTP, constraints as query-string text: codes as bytes, and GET /v1/count
            text = {}
            for name in ("bbox", "near"):
                if name in kw:
                    text[name] = ",".join(repr(float(v)) for v in kw[name])
            if "time" in kw:
                text["time"] = kw["time"]
            raw = httpx.post(f"{url}/v1/search/codes", params={"k": total, **text},
                             content=code.tobytes(),
                             headers={"Content-Type": "application/octet-stream"}, timeout=60)
            assert raw.status_code == 200, raw.text
            assert [(h["id"], h["distance"]) for h in raw.json()["results"][0]] == \
                [(h.id, h.distance) for h in here], (qi, text)
            raw = httpx.get(f"{url}/v1/count", params=text, timeout=60)
            assert raw.status_code == 200 and raw.json()["count"] == len(got), (qi, text, raw.text)
    return seen


def test_http_searches_and_counts_equal_local_and_the_brute_force(world, tmp_path, request):
    """``rsir serve`` over the geo archive (a copy of the Lite file, then the same items on the
    Milvus server when one is available): through RemoteRetriever and raw HTTP, seeded random
    boxes (some across 180°), points with radii and periods give exactly the local hits and
    the brute force's items."""
    from serve_support import ServerProcess, copy_db

    rng = np.random.default_rng(15)
    qcodes = np.concatenate([rng.integers(0, 256, (2, 8), dtype=np.uint8), world["codes"][3:4]])
    queries = _queries(15, 9)
    total = len(world["truth"])
    assert sum("bbox" in q and q["bbox"][0] > q["bbox"][2] for q in queries) >= 2
    served = copy_db(Path(world["db"]), tmp_path / "served")
    server = ServerProcess([world["bundle"], "--uri", served, "--collection", "geo",
                            "--max-k", max(total, 10)], tmp_path / "serve-lite.log")
    try:
        with Retriever(world["bundle"], uri=world["db"], collection="geo") as local:
            seen = _http_matches_local(world, server.url, local, queries, qcodes)
    finally:
        assert server.stop() == 0, server.log[-3000:]
    assert seen["inside"] > 150 and seen["unsure"] < seen["inside"] / 20, seen
    assert seen["empty"] < len(queries) / 2 and seen["across"] >= 1, seen

    try:
        server_uri = request.getfixturevalue("server_uri")
    except pytest.skip.Exception:
        return  # no Milvus server here: the Lite half above still ran
    name = "geo_search_http"
    with Retriever(world["bundle"], uri=server_uri, collection=name) as r:
        r.store.drop()
        _fill(r, world)
        r.prepare_for_search()
        server = ServerProcess([world["bundle"], "--uri", server_uri, "--collection", name,
                                "--max-k", max(total, 10)], tmp_path / "serve-milvus.log")
        try:
            with Retriever(world["bundle"], uri=world["db"], collection="geo") as lite:
                seen = _http_matches_local(world, server.url, r, queries[:12], qcodes, lite=lite)
        finally:
            assert server.stop() == 0, server.log[-3000:]
            r.store.drop()
    assert seen["inside"] > 100 and seen["unsure"] < seen["inside"] / 20, seen


def test_a_place_or_time_in_metadata_is_read_in_every_documented_form_or_said(tmp_path, caplog):
    """``lonlat`` alone (without ``lonlat_bounds``) and an epoch-seconds ``time`` were dropped
    without a word; a value that does not parse stays metadata, and the write now says so."""
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (5, 8), dtype=np.uint8)
    meta = [{"lonlat": [151.0, -34.0]}, {"time": 1594000000}, {"lonlat": (151.0, -134.0)},
            {"time": "soon", "lonlat": [2, 48]}, {"note": "no place"}]
    with MilvusCodeStore(str(tmp_path / "m.db"), "m", bits=64) as store:
        with caplog.at_level("WARNING", logger="rsir_sdk"):
            store.upsert([f"i{k}" for k in range(5)], codes, metadata=meta)
        got = {it.id: it for it in store.get([f"i{k}" for k in range(5)])}
        assert got["i0"].footprint == pytest.approx((151.0, -34.0, 151.0, -34.0))
        assert got["i1"].time == "2020-07-06T01:46:40Z" and got["i1"].footprint is None
        assert got["i2"].footprint is None and got["i2"].metadata["lonlat"] == [151.0, -134.0]
        assert got["i3"].footprint == pytest.approx((2, 48, 2, 48)) and got["i3"].time is None
        assert got["i4"].footprint is None and got["i4"].time is None
        assert store.count(geo=GeoFilter.of(near=(151.0, -34.0, 1.0))) == 1
        warned = [r.getMessage() for r in caplog.records if "does not parse" in r.getMessage()]
        assert len(warned) == 1 and warned[0].startswith("2 of 5 items"), warned
        assert "id 'i2'" in warned[0] and "and 1 more" in warned[0] and "\n" not in warned[0]
        # text is not split into a point ("12" was the point (1, 2)); metadata the write's
        # own footprint and time make unused is not judged
        caplog.clear()
        with caplog.at_level("WARNING", logger="rsir_sdk"):
            store.upsert(["s", "e"], codes[:2], metadata=[{"lonlat": "12"}, {"lonlat": "x"}],
                         footprints=[None, (3.0, 4.0)], times=[None, 5.0])
        assert store.get(["s"])[0].footprint is None
        assert store.get(["e"])[0].footprint == pytest.approx((3.0, 4.0, 3.0, 4.0))
        again = [r.getMessage() for r in caplog.records if "does not parse" in r.getMessage()]
        assert len(again) == 1 and again[0].startswith("1 of 2 items") and "id 's'" in again[0]


def test_the_summary_says_how_many_reasons_it_leaves_out():
    """Four reasons for "no place" printed three lines and no word of the fourth."""
    from rsir_sdk.cli.index import _top_reasons

    lines = _top_reasons({"a CRS without an EPSG code": 1, "metres as degrees": 3,
                          "not finite": 2, "outside the CRS": 1})
    assert len(lines) == 4 and "metres as degrees" in lines[0] and "not finite" in lines[1]
    assert lines[3].split()[:3] == ["1", "1", "other"] and "--json" in lines[3]
    assert len(_top_reasons({"x": 1, "y": 1, "z": 1})) == 3
