"""Place and period over HTTP (issue 22): `bbox`, `near` and `time` through `rsir serve` (a real
uvicorn subprocess on 127.0.0.1 over a real Milvus Lite file) equal a brute-force check in Python
and the in-process `Retriever`, through `RemoteRetriever` and raw HTTP (query strings, JSON
bodies, form fields); bad values are a 422 `InvalidInputError` with one line, refused by the
client before any byte is sent; footprints and times written over HTTP come back on the hits.

The collection: 150 sample scenes with seeded random footprints (boxes, some across the
antimeridian, points, a box over a pole, none) and times (some none), clustered round a few
places so that random boxes, points with radii and periods select a part of them.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import numpy as np
import pytest

pytest.register_assert_rewrite("serve_support")
from serve_support import ServerProcess, copy_db  # noqa: E402

from rsir_sdk import Retriever  # noqa: E402
from rsir_sdk.errors import InvalidInputError  # noqa: E402
from rsir_sdk.geo import GeoFilter, parse_time  # noqa: E402
from rsir_sdk.hits import Hit  # noqa: E402
from rsir_sdk.serve.client import RemoteRetriever  # noqa: E402
from rsir_sdk.store import tie_order  # noqa: E402

pytest_plugins = ["serve_support"]

COLLECTION = "geo_http"
N = 150
#: (lon, lat, spread in degrees): where the footprints cluster (two straddle the antimeridian)
PLACES = [(2.3, 48.8, 2.0), (179.6, -17.0, 1.5), (-179.8, 10.0, 1.0), (12.0, 60.0, 3.0),
          (0.0, 0.0, 1.0), (-70.0, -33.0, 2.0)]
T0, T1 = parse_time("2018-01-01"), parse_time("2024-12-31", end=True)


def _wrap(lon: float) -> float:
    return (lon + 180.0) % 360.0 - 180.0


def _footprints(rng: np.random.Generator) -> tuple[list[Any], list[str | None]]:
    """Per item: a (w, s, e, n) box, a (lon, lat) point or None; an ISO time or None."""
    fps: list[Any] = []
    times: list[str | None] = []
    for i in range(N):
        lon0, lat0, spread = PLACES[i % len(PLACES)]
        lon, lat = _wrap(lon0 + rng.normal(0, spread)), float(np.clip(lat0 + rng.normal(0, spread), -85, 85))
        kind = rng.random()
        if i == 7:
            fps.append((-180.0, 80.0, 180.0, 90.0))        # over the north pole: every longitude
        elif kind < 0.1:
            fps.append(None)
        elif kind < 0.3:
            fps.append((round(lon, 6), round(lat, 6)))
        else:
            w, h = rng.uniform(0.01, 1.2, 2)
            fps.append((round(_wrap(lon - w / 2), 6), round(lat - h / 2, 6),
                        round(_wrap(lon + w / 2), 6), round(lat + h / 2, 6)))
        t = rng.uniform(T0, T1)
        times.append(None if rng.random() < 0.12 else
                     np.datetime_as_string(np.datetime64(int(t), "s")) + "Z")
    return fps, times


# ----------------------------------------------------------------------- the brute-force oracle

def _box(fp: Any) -> tuple[float, float, float, float] | None:
    if fp is None:
        return None
    return (fp[0], fp[1], fp[0], fp[1]) if len(fp) == 2 else tuple(fp)


def _lon_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two longitude intervals (west, east; west > east crossing 180) share a meridian:
    both unrolled onto the line, compared at every whole turn."""
    def unroll(w: float, e: float) -> tuple[float, float]:
        if (w, e) == (-180.0, 180.0):
            return -180.0, 180.0
        return (w, e) if e >= w else (w, e + 360.0)

    (aw, ae), (bw, be) = unroll(*a), unroll(*b)
    return any(aw <= be + k and bw + k <= ae for k in (-360.0, 0.0, 360.0))


def _keeps(where: dict[str, Any], fp: Any, t: str | None) -> bool:
    """The brute-force filter: written from the definitions, not from rsir_sdk.geo (but for
    the exact point-to-box sphere distance of ``near``, which tests/test_geo.py checks)."""
    box = _box(fp)
    if "time" in where:
        start, end = where["time"]
        if t is None:
            return False
        tt = parse_time(t)
        if (start is not None and tt < parse_time(start)) or \
                (end is not None and tt > parse_time(end, end=True)):
            return False
    if "bbox" in where:
        w, s, e, n = where["bbox"]
        if box is None or box[1] > n or box[3] < s or not _lon_overlap((w, e), (box[0], box[2])):
            return False
    if "near" in where:
        if box is None:
            return False
        exact = GeoFilter.of(near=where["near"])
        if not exact.keep(_footprint_obj(box)):
            return False
    return True


def _footprint_obj(box: tuple[float, float, float, float]):
    from rsir_sdk.geo import Footprint

    return Footprint.of_box(box)


def _popcount(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)


def _expected(world: dict[str, Any], code: np.ndarray, k: int, where: dict[str, Any],
              radius: int | None = None) -> list[tuple[str, int]]:
    dist = _popcount(world["codes"], code[None, :])
    rank = np.empty(N, dtype=np.int64)
    rank[world["tie"]] = np.arange(N)
    keep = [i for i in range(N) if _keeps(where, world["fps"][i], world["times"][i])
            and (radius is None or dist[i] <= radius)]
    keep.sort(key=lambda i: (int(dist[i]), int(rank[i])))
    return [(world["ids"][i], int(dist[i])) for i in keep[:k]]


def _random_where(rng: np.random.Generator) -> dict[str, Any]:
    """A box, a point with a radius and/or a period, each as the user would type it."""
    where: dict[str, Any] = {}
    kinds = [("bbox",), ("near",), ("time",), ("bbox", "time"), ("near", "time"),
             ("bbox", "near")][rng.integers(0, 6)]
    lon0, lat0, spread = PLACES[rng.integers(0, len(PLACES))]
    if "bbox" in kinds:
        lon, lat = lon0 + rng.normal(0, spread), lat0 + rng.normal(0, spread)
        w, h = rng.uniform(0.5, 4 * spread, 2)
        where["bbox"] = (round(_wrap(lon - w / 2), 4), round(max(-90, lat - h / 2), 4),
                         round(_wrap(lon + w / 2), 4), round(min(90, lat + h / 2), 4))
    if "near" in kinds:
        where["near"] = (round(_wrap(lon0 + rng.normal(0, spread)), 4),
                         round(lat0 + rng.normal(0, spread), 4), float(rng.choice([2e4, 1e5, 3e5])))
    if "time" in kinds:
        a, b = sorted(rng.uniform(T0, T1, 2))
        day = lambda t: str(np.datetime64(int(t), "s"))[:10]  # noqa: E731
        where["time"] = [(day(a), day(b)), (None, day(b)), (day(a), None)][rng.integers(0, 3)]
    return where


def _text(where: dict[str, Any]) -> dict[str, str]:
    """Query-string forms: ``W,S,E,N``, ``LON,LAT,METRES``, ``START/END`` (``..`` open)."""
    out = {}
    for key, v in where.items():
        out[key] = "/".join(x or ".." for x in v) if key == "time" else ",".join(map(str, v))
    return out


# ----------------------------------------------------------------------- the world

@pytest.fixture(scope="module")
def world(rp_bundle, sample_images, tmp_path_factory):
    d = tmp_path_factory.mktemp("geo-http")
    rng = np.random.default_rng(22)
    fps, times = _footprints(rng)
    paths = [p.resolve() for p, _ in sample_images]
    ids = [f"g/{i}" for i in range(N)]
    base = d / "base" / "rsir.db"
    base.parent.mkdir()
    with Retriever(rp_bundle[0], uri=str(base), collection=COLLECTION) as r:
        r.add_images(paths[:N], ids=ids, labels=[lab for _, lab in sample_images[:N]],
                     footprints=fps, times=times)
        codes = r.encoder.encode(paths[:N])
    server = ServerProcess([rp_bundle[0], "--uri", copy_db(base, d / "remote"), "--collection",
                            COLLECTION, "--max-k", 200], d / "serve.log")
    local = Retriever(rp_bundle[0], uri=str(copy_db(base, d / "local")), collection=COLLECTION)
    remote = RemoteRetriever(server.url)
    yield {"fps": fps, "times": times, "ids": ids, "codes": codes, "tie": tie_order(ids),
           "paths": paths, "server": server, "local": local, "remote": remote, "dir": d}
    remote.close()
    local.close()
    assert server.stop() == 0, server.log[-3000:]


def _pairs(hits: list[Hit]) -> list[tuple[str, int]]:
    return [(h.id, h.distance) for h in hits]


def test_filtered_searches_equal_brute_force_locally_and_over_http(world):
    local, remote, url = world["local"], world["remote"], world["server"].url
    rng = np.random.default_rng(2022)
    queries = [world["paths"][i] for i in (3, 160, 175)]          # one stored, two not
    qcodes = local.encoder.encode(queries)
    nonempty = 0
    partial = 0
    for trial in range(30):
        where = _random_where(rng)
        qi = trial % len(queries)
        k = int(rng.choice([5, 20, 200]))
        want = _expected(world, qcodes[qi], k, where)
        nonempty += bool(want)
        partial += 0 < len(_expected(world, qcodes[qi], N, where)) < N
        here = local.search(queries[qi], k=k, **where)
        assert _pairs(here) == want, (trial, where)
        there = remote.search(queries[qi], k=k, **where)
        assert there == here, (trial, where)                     # every field, footprint and time
        text = _text(where)
        raw = httpx.post(f"{url}/v1/search", params={"k": k, **text},
                         content=queries[qi].read_bytes(),
                         headers={"Content-Type": "image/jpeg"}).json()
        assert [(h["id"], h["distance"]) for h in raw["hits"]] == want, (trial, text)
        body = {"code": base64.b64encode(qcodes[qi].tobytes()).decode(), "k": k,
                **{key: list(v) for key, v in where.items()}}
        raw = httpx.post(f"{url}/v1/search/codes", json=body).json()
        assert [(h["id"], h["distance"]) for h in raw["results"][0]] == want, (trial, body)
        n_all = len(_expected(world, qcodes[qi], N, where))
        assert local.count(**where) == remote.count(**where) == n_all, (trial, where)
        assert httpx.get(f"{url}/v1/count", params=text).json()["count"] == n_all
    assert nonempty >= 20 and partial >= 20, (nonempty, partial)   # the trials select something


def test_a_time_offset_typed_into_a_url_unescaped_means_the_same_period(world):
    """``time=...T02:00:00+02:00/..`` typed into a URL: the query string turns ``+`` into a
    space. It was refused ("not an ISO 8601 time") unless written ``%2B``; it is the same
    period as the UTC one."""
    url = world["server"].url
    utc = httpx.get(f"{url}/v1/count", params={"time": "2020-06-01T00:00:00Z/.."}).json()["count"]
    typed = httpx.get(f"{url}/v1/count?time=2020-06-01T02:00:00+02:00/..")
    assert typed.status_code == 200, typed.text
    assert typed.json()["count"] == utc
    assert 0 < utc < N                                     # the period selects some, not all


def test_batch_codes_and_range_search_with_place_and_period(world):
    local, remote = world["local"], world["remote"]
    queries = [world["paths"][i] for i in (10, 40, 170)]
    codes = local.encoder.encode(queries)
    where = {"bbox": (170.0, -30.0, -170.0, 30.0), "time": ("2019-01-01", None)}  # across 180
    want = [_expected(world, c, 7, where) for c in codes]
    assert all(want) and any(len(w) == 7 for w in want)
    assert [_pairs(h) for h in local.search_batch(queries, k=7, **where)] == want
    assert remote.search_batch(queries, k=7, batch_size=2, **where) == \
        local.search_batch(queries, k=7, **where)
    assert remote.search_codes(codes, k=7, **where) == local.search_codes(codes, k=7, **where)
    near = {"near": (2.3, 48.8, 250_000.0)}
    ranged = local.range_search(queries[0], radius=30, **near)
    assert _pairs(ranged) == _expected(world, codes[0], N, near, radius=30) and ranged
    assert remote.range_search(queries[0], radius=30, **near) == ranged
    # a multipart upload carries them as form fields
    files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in queries]
    raw = httpx.post(f"{world['server'].url}/v1/search/batch", files=files,
                     data={"k": "7", "bbox": "170,-30,-170,30", "time": "2019-01-01/.."}).json()
    assert [[(h["id"], h["distance"]) for h in r] for r in raw["results"]] == want


def test_hits_carry_footprint_and_time(world):
    local, remote = world["local"], world["remote"]
    hits = remote.search(world["paths"][0], k=N)
    by_id = {h.id: h for h in hits}
    assert len(by_id) == N
    for i, item in enumerate(world["ids"]):
        h, box, t = by_id[item], _box(world["fps"][i]), world["times"][i]
        if box is None:
            assert h.footprint is None
        else:
            assert h.footprint is not None and np.allclose(h.footprint, box, atol=1e-9), (item, h)
        assert (h.time is None) == (t is None) and \
            (t is None or parse_time(h.time) == parse_time(t)), (item, h.time, t)
    assert hits == local.search(world["paths"][0], k=N)
    raw = httpx.post(f"{world['server'].url}/v1/search", params={"k": 3},
                     content=world["paths"][0].read_bytes()).json()["hits"][0]
    assert set(raw) == {"id", "distance", "label", "path", "metadata", "footprint", "time"}


BAD = [
    ("bbox", "1,2,3", "bbox must be west,south,east,north (4 numbers)"),
    ("bbox", "0,10,1,5", "bbox south (10) is north of bbox north (5)"),
    ("bbox", "0,-95,1,5", "bbox south must lie in [-90, 90] degrees"),
    ("bbox", "200,0,1,5", "bbox west must lie in [-180, 180] degrees"),
    ("near", "1,2,-5", "near metres must be >= 0"),
    ("near", "1,2", "near must be lon,lat,metres (3 numbers)"),
    ("time", "yesterday/..", "time start 'yesterday' is not an ISO 8601 time"),
    ("time", "..", "time must be 'start/end'"),
    ("time", "2022-01-01/2021-01-01", "is after time end"),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_place_or_period_is_one_line_422_and_refused_before_sending(world, key, value, message):
    url, remote, local = world["server"].url, world["remote"], world["local"]
    code = world["codes"][0]
    answers = [
        httpx.get(f"{url}/v1/count", params={key: value}),
        httpx.post(f"{url}/v1/search/codes", params={key: value}, content=code.tobytes(),
                   headers={"Content-Type": "application/octet-stream"}),
        httpx.post(f"{url}/v1/search/codes", json={"code": base64.b64encode(code.tobytes()).decode(),
                                                   key: value}),
        httpx.post(f"{url}/v1/count", json={key: value}),
        httpx.post(f"{url}/v1/search", files=[("image", ("a.jpg", world["paths"][0].read_bytes()))],
                   data={key: value}),
    ]
    for a in answers:
        body = a.json()
        assert a.status_code == 422 and body["error"] == "InvalidInputError", (a.request.url, body)
        assert message in body["message"] and "\n" not in body["message"], body
    sent = remote.bytes_sent
    for call in (lambda: remote.search_codes(code, **{key: value}),
                 lambda: remote.count(**{key: value}),
                 lambda: remote.search(world["paths"][0], **{key: value})):
        with pytest.raises(InvalidInputError, match=_re(message)):
            call()
    assert remote.bytes_sent == sent                               # nothing was sent
    with pytest.raises(InvalidInputError, match=_re(message)):
        local.search_codes(code, **{key: value})


def _re(text: str) -> str:
    return re.escape(text)


def test_writes_over_http_store_footprints_and_times_as_locally(world):
    local, remote = world["local"], world["remote"]
    from rsir_sdk.geo import Footprint

    paths = world["paths"][180:184]
    ids = [f"w/{i}" for i in range(4)]
    fps = [(179.9, -16.6, -179.95, -16.5), (151.2, -33.9), None,
           Footprint.of_box((5.0, 45.0, 5.5, 45.5), parse_time("2001-02-03T04:05:06Z"))]
    times = ["2023-05-06T07:08:09+02:00", 1_600_000_000.5, None, None]
    assert local.add_images(paths, ids=ids, footprints=fps, times=times) == 4
    assert remote.add_images(paths, ids=ids, footprints=fps, times=times, batch_size=3) == 4
    codes = local.encoder.encode(world["paths"][184:186])
    assert local.add_codes(codes, ["c/0", "c/1"], footprints=[(10.0, 10.0), None],
                           times=[None, "2020-02-29"]) == 2
    assert remote.add_codes(codes, ["c/0", "c/1"], footprints=[(10.0, 10.0), None],
                            times=[None, "2020-02-29"]) == 2
    every = {"bbox": (-180.0, -90.0, 180.0, 90.0)}
    want = local.search(paths[0], k=200, **every)
    got = remote.search(paths[0], k=200, **every)
    assert got == want
    mine = {h.id: h for h in got if h.id.startswith(("w/", "c/"))}
    assert set(mine) == {"w/0", "w/1", "w/3", "c/0"}              # no footprint: left out
    assert mine["w/0"].footprint == pytest.approx((179.9, -16.6, -179.95, -16.5))
    assert mine["w/0"].time == "2023-05-06T05:08:09Z"
    assert mine["w/1"].footprint == pytest.approx((151.2, -33.9, 151.2, -33.9))
    assert mine["w/3"].time == "2001-02-03T04:05:06Z"
    period = {"time": ("2020-02-29", "2020-02-29")}
    day = remote.search_codes(codes, k=200, **period)[1]
    assert day == local.search_codes(codes, k=200, **period)[1]
    assert "c/1" in [h.id for h in day] and "c/0" not in [h.id for h in day]
    assert all(h.time is not None and h.time.startswith("2020-02-29") for h in day)
    # one bad footprint or time: one line naming it, nothing written (client and raw HTTP)
    n = remote.count()
    with pytest.raises(InvalidInputError, match="footprint of id 'x/1': lat must lie in"):
        remote.add_codes(codes, ["x/0", "x/1"], footprints=[None, (1.0, 95.0)])
    with pytest.raises(InvalidInputError, match="time of id 'x/0' 'not a time' is not an ISO 8601 time"):
        remote.add_codes(codes, ["x/0", "x/1"], times=["not a time", None])
    raw = httpx.post(f"{world['server'].url}/v1/codes", json={
        "ids": ["x/0"], "codes": [base64.b64encode(codes[0].tobytes()).decode()],
        "footprints": [[0, 10, 1, 5]]})
    assert raw.status_code == 422 and raw.json()["error"] == "InvalidInputError"
    assert "footprint of id 'x/0'" in raw.json()["message"] and "north" in raw.json()["message"]
    raw = httpx.post(f"{world['server'].url}/v1/codes", json={
        "ids": ["x/0"], "codes": [base64.b64encode(codes[0].tobytes()).decode()],
        "footprints": [[0, 10], [1, 2]]})
    assert raw.status_code == 422 and "1 items but 2 footprints" in raw.json()["message"]
    assert remote.count() == n
    info = remote.info()
    assert info["without_footprint"] == local.info()["without_footprint"] == \
        sum(fp is None for fp in world["fps"]) + 2
    assert info["count"] == n


def test_openapi_documents_place_and_period(world):
    spec = httpx.get(f"{world['server'].url}/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def body(path: str) -> dict[str, Any]:
        return spec["paths"][path]["post"]["requestBody"]["content"]

    for path in ("/v1/search", "/v1/search/batch", "/v1/search/codes", "/v1/count"):
        assert {"bbox", "near", "time"} <= set(body(path)["application/json"]["schema"]["properties"])
    assert {"footprints", "times"} <= set(body("/v1/items")["application/json"]["schema"]["properties"])
    assert {"footprints", "times"} <= set(schemas["AddCodesJSON"]["properties"])
    assert {"footprint", "time"} <= set(schemas["HitOut"]["properties"])
    assert "without_footprint" in schemas["InfoOut"]["properties"]
    count = [p["name"] for p in spec["paths"]["/v1/count"]["get"]["parameters"]]
    assert {"filter", "bbox", "near", "time"} <= set(count)
    form = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert {"bbox", "near", "time"} <= set(form["schema"]["properties"])


def test_http_on_a_milvus_server_equals_brute_force(world, rp_bundle, server_uri):
    """The same collection on a real Milvus 2.3.5 server, served by `rsir serve`: filtered
    searches through HTTP equal the brute force and the in-process Retriever on the server."""
    name = "geo_http_server"
    with Retriever(rp_bundle[0], uri=server_uri, collection=name) as r:
        r.store.drop()
    with Retriever(rp_bundle[0], uri=server_uri, collection=name) as r:
        r.add_images(world["paths"][:N], ids=world["ids"],
                     footprints=world["fps"], times=world["times"])
        r.prepare_for_search()
        server = ServerProcess([rp_bundle[0], "--uri", server_uri, "--collection", name,
                                "--max-k", 200], world["dir"] / "serve-milvus.log")
        try:
            with RemoteRetriever(server.url) as remote:
                rng = np.random.default_rng(7)
                queries = [world["paths"][i] for i in (5, 190)]
                qcodes = r.encoder.encode(queries)
                for trial in range(10):
                    where = _random_where(rng)
                    qi = trial % 2
                    want = _expected(world, qcodes[qi], 20, where)
                    here = r.search(queries[qi], k=20, **where)
                    assert _pairs(here) == want, (trial, where)
                    assert remote.search(queries[qi], k=20, **where) == here, (trial, where)
                    raw = httpx.get(f"{server.url}/v1/count", params=_text(where)).json()
                    assert raw["count"] == len(_expected(world, qcodes[qi], N, where))
                assert remote.info()["without_footprint"] == sum(fp is None for fp in world["fps"])
        finally:
            assert server.stop() == 0, server.log[-3000:]
            r.store.drop()
