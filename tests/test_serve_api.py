"""`rsir serve` over real HTTP: a uvicorn subprocess on 127.0.0.1, a real Milvus Lite file, the
int8 bundle, the shipped sample. Every answer is compared with an in-process `Retriever` on the
same collection (computed before the server opened the file)."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest

pytest.register_assert_rewrite("serve_support")
from serve_support import COLLECTION, READ, WRITE, auth, hits_json  # noqa: E402

pytest_plugins = ["serve_support"]


@pytest.fixture(scope="module")
def http(main_server):
    with httpx.Client(base_url=main_server.url, timeout=30) as client:
        yield client


def test_search_by_upload_raw_body_url_base64_and_codes_equal_in_process(http, served, image_host,
                                                                          sample_dir):
    exp = served.expected
    for i, q in enumerate(exp["queries"]):
        want = hits_json(exp["search"][i])
        data = q.read_bytes()
        up = http.post("/v1/search", files={"image": (q.name, data)}, data={"k": "10"},
                       headers=auth(READ))
        assert up.status_code == 200, up.text
        assert up.json()["hits"] == want
        raw = http.post("/v1/search", params={"k": 10}, content=data,
                        headers={**auth(READ), "Content-Type": "image/jpeg"})
        assert raw.json()["hits"] == want
        url = f"{image_host}/{q.relative_to(sample_dir).as_posix()}"
        by_url = http.post("/v1/search", json={"url": url, "k": 10}, headers=auth(WRITE))
        assert by_url.status_code == 200, by_url.text
        assert by_url.json()["hits"] == want
        b64 = http.post("/v1/search", json={"image_base64": base64.b64encode(data).decode()},
                        headers=auth(READ))
        assert b64.json()["hits"] == want  # k defaults to 10, as in Python
        forest = http.post("/v1/search", content=data, headers=auth(READ),
                           params={"k": 30, "filter": json.dumps({"label": "Forest"})})
        assert forest.json()["hits"] == hits_json(exp["forest"][i])
        radius = http.post("/v1/search", files={"image": ("q.jpg", data)},
                           data={"k": "50", "radius": "12"}, headers=auth(READ))
        assert radius.json()["hits"] == hits_json(exp["radius"][i])
    codes = exp["codes"]
    raw = http.post("/v1/search/codes", params={"k": 10}, content=codes.tobytes(),
                    headers={**auth(READ), "Content-Type": "application/octet-stream"})
    assert raw.status_code == 200, raw.text
    assert raw.json()["results"] == [hits_json(h) for h in exp["by_codes"]]
    assert exp["by_codes"] == exp["search"]
    as_json = http.post("/v1/search/codes", headers=auth(READ), json={
        "codes": [base64.b64encode(c.tobytes()).decode() for c in codes], "k": 10})
    assert as_json.json()["results"] == raw.json()["results"]
    one = http.post("/v1/search/codes", headers=auth(READ),
                    json={"code": base64.b64encode(codes[0].tobytes()).decode()})
    assert one.json()["results"] == raw.json()["results"][:1]
    batch = http.post("/v1/search/batch", params={"k": 7}, headers=auth(READ),
                      files=[("image", (q.name, q.read_bytes())) for q in exp["queries"]])
    assert batch.json()["results"] == [hits_json(h) for h in exp["batch"]]


def test_auth_limits_and_error_kinds(http, served, main_server):
    q = served.expected["queries"][0].read_bytes()
    r = http.post("/v1/search", content=q)
    assert r.status_code == 401 and r.json()["error"] == "AuthenticationError"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert http.get("/v1/info", headers=auth("wrong-token")).status_code == 401
    assert http.get("/v1/count", headers={"Authorization": READ}).status_code == 401  # no scheme
    r = http.post("/v1/codes", headers=auth(READ), json={"ids": ["x"], "codes": ["AAAAAAAAAAA="]})
    assert r.status_code == 403 and r.json()["error"] == "ForbiddenError"
    assert http.post("/v1/items/delete", json={"ids": ["x"]}).status_code == 401
    # limits
    big = b"\xff\xd8" + bytes(70_000)
    r = http.post("/v1/search", content=big, headers=auth(READ))
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLargeError"
    assert r.text.startswith('{"error":"PayloadTooLargeError",')   # the form of every answer
    chunks = (big[i:i + 8192] for i in range(0, len(big), 8192))   # no Content-Length: counted
    r = http.post("/v1/search", content=chunks, headers=auth(READ))
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLargeError"
    chunks = (b'{"ids": [' + b'"x",' * 20000 + b'"y"]}' for _ in range(1))  # a JSON route too
    r = http.post("/v1/items/delete", content=chunks,
                  headers={**auth(WRITE), "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLargeError"
    for k in (0, 101, -3, 10**13):
        r = http.post("/v1/search", params={"k": k}, content=q, headers=auth(READ))
        assert r.status_code == 422 and r.json()["error"] == "InvalidInputError", r.text
        assert "k must be between 1 and 100" in r.json()["message"], r.text   # a whole number
    r = http.post("/v1/search", params={"radius": 10**15}, content=q, headers=auth(READ))
    assert r.status_code == 422 and "not an integer" not in r.text and "radius" in r.text, r.text
    r = http.post("/v1/search/batch", headers=auth(READ), files=[("image", ("a.jpg", q))] * 9)
    assert r.status_code == 422 and "max-batch" in r.json()["message"]
    r = http.post("/v1/search", params={"radius": 65}, content=q, headers=auth(READ))
    assert r.status_code == 422
    # error kinds mirror the Python exceptions, one line, never a traceback
    r = http.post("/v1/search", content=b"not an image at all", headers=auth(READ))
    assert r.status_code == 422 and r.json()["error"] == "ImageLoadError"
    assert r.json()["reason"].startswith("not an image in a supported format")
    r = http.post("/v1/search/codes", content=bytes(7), headers=auth(READ))
    assert r.status_code == 422 and r.json()["error"] == "CodeLengthError"
    r = http.post("/v1/search/codes", content=bytes(8), headers={**auth(READ), "X-Rsir-Encoder-Id": "0" * 16})
    assert r.status_code == 409 and r.json()["error"] == "CollectionMismatchError"
    r = http.post("/v1/search", params={"filter": '"label == 1"'}, content=q, headers=auth(READ))
    assert r.status_code == 422 and r.json()["error"] == "InvalidInputError"   # the store's class
    assert r.json()["message"].startswith("invalid filter expression")
    r = http.post("/v1/search", params={"filter": "5"}, content=q, headers=auth(READ))
    assert r.status_code == 422 and r.json()["error"] == "InvalidRequestError"
    r = http.post("/v1/search", json={"url": "file:///etc/passwd"}, headers=auth(READ))
    assert r.status_code == 422 and r.json()["error"] == "ImageLoadError"
    r = http.post("/v1/search", json={"urll": "x"}, headers=auth(READ))
    assert r.status_code == 422 and r.json()["error"] == "InvalidRequestError"
    r = http.get("/v1/nothing-here", headers=auth(READ))
    assert r.status_code == 404 and r.json()["error"] == "NotFoundError"
    for resp in (r,):
        assert "Traceback" not in resp.text and "\n" not in resp.json()["message"]
    assert "Traceback" not in main_server.log


def test_requests_that_say_two_things_are_refused_not_guessed(http, served, main_server):
    """k in the query and in the body (the body won without a word), code with codes, url with
    image_base64 (it read as "2 images sent"): each is one 422 naming what to fix. The
    encoder id header is hexadecimal: its case does not matter."""
    q = served.expected["queries"][0].read_bytes()
    code = base64.b64encode(bytes(8)).decode()
    r = http.post("/v1/search", params={"k": 3}, files={"image": ("q.jpg", q)},
                  data={"k": "5"}, headers=auth(READ))
    assert r.status_code == 422 and "k given both in the query string and in the body" in \
        r.json()["message"], r.text
    # a JSON body without k and ?k=: one k, the query's (k's default was read as the body's)
    image = base64.b64encode(q).decode()
    def hits(r):
        assert r.status_code == 200, r.text
        return r.json()["hits"] if "hits" in r.json() else r.json()["results"][0]

    for path, body in (("/v1/search", {"image_base64": image}), ("/v1/search/codes", {"code": code})):
        assert len(hits(http.post(path, params={"k": 2}, json=body, headers=auth(READ)))) == 2
        assert len(hits(http.post(path, json=body, headers=auth(READ)))) == 10  # no k at all
    # a blank filter form field is no filter, as a blank query value; an expression typed
    # as it is says how to write it (it said only "Expecting value: line 1 column 1")
    r = http.post("/v1/search", files={"image": ("q.jpg", q)}, data={"filter": "", "k": "3"},
                  headers=auth(READ))
    assert r.status_code == 200 and len(r.json()["hits"]) == 3, r.text
    r = http.post("/v1/search", files={"image": ("q.jpg", q)}, data={"filter": 'label == "x"'},
                  headers=auth(READ))
    assert r.status_code == 422 and "one as a JSON string" in r.json()["message"]
    r = http.post("/v1/search/codes", json={"code": code, "codes": [code]}, headers=auth(READ))
    assert r.status_code == 422 and "not both" in r.json()["message"]
    r = http.post("/v1/search/codes", json={"codes": []}, headers=auth(READ))
    assert r.status_code == 422 and "non-empty list" in r.json()["message"]
    r = http.post("/v1/search", json={"url": "http://127.0.0.1:9/x.jpg",
                                      "image_base64": base64.b64encode(q).decode()},
                  headers=auth(READ))
    assert r.status_code == 422 and r.json()["message"] == "give `url` or `image_base64`, not both"
    encoder = http.get("/v1/info", headers=auth(READ)).json()["encoder_id"]
    r = http.post("/v1/search/codes", content=bytes(8),
                  headers={**auth(READ), "X-Rsir-Encoder-Id": encoder.upper()})
    assert r.status_code == 200, r.text
    assert "Traceback" not in main_server.log


def test_bad_options_read_as_in_process_on_every_route(http, served, main_server):
    """A parameter given twice in the query string: the last one won (?k=5&k=7 gave 7 hits).
    A filter of the wrong shape in a JSON body: a validator dump ("filter.dict[str,
    nullable[union[...]]].label.str: ... (6 error(s))"), another wording than the query
    string's and the Python API's. k null: "Input should be a valid integer". A blank k= in a
    form failed. radius -1: the service's words differed from the Retriever's."""
    from rsir_sdk import Retriever
    from rsir_sdk.errors import InvalidInputError

    q = served.expected["queries"][0]
    raw = {**auth(READ), "Content-Type": "application/octet-stream"}
    r = http.post("/v1/search?k=5&k=7", content=q.read_bytes(), headers=raw)
    assert r.status_code == 422 and r.json()["message"] == \
        "query parameter 'k' given twice: give each once", r.text
    r = http.get("/v1/count?bbox=0,45,15,55&bbox=-10,40,20,56", headers=auth(READ))
    assert r.status_code == 422 and "'bbox' given twice" in r.json()["message"], r.text
    b64 = base64.b64encode(q.read_bytes()).decode()
    with Retriever(served.bundle, uri=str(served.db), collection=COLLECTION) as local:
        for flt in ({"label": {"a": 1}}, {"label": []}, {"label": [{"a": 1}]}):
            with pytest.raises(InvalidInputError) as err:
                local.search(q, k=3, filter=flt)
            for route, body in (("/v1/search", {"image_base64": b64}), ("/v1/count", {})):
                r = http.post(route, json={**body, "filter": flt}, headers=auth(READ))
                assert r.status_code == 422, r.text
                assert r.json()["error"] == "InvalidInputError", (flt, route, r.text)
                assert r.json()["message"] == str(err.value), (flt, route, r.text)
        with pytest.raises(InvalidInputError) as err:
            local.search(q, k=3, radius=-1)
        r = http.post("/v1/search?radius=-1", content=q.read_bytes(), headers=raw)
        assert r.status_code == 422 and r.json()["message"] == str(err.value), r.text
    for body in ({"filter": [1, 2]}, {"k": None}):
        r = http.post("/v1/search", json={"image_base64": b64, **body}, headers=auth(READ))
        assert r.status_code == 422 and "error(s)" not in r.json()["message"], (body, r.text)
    assert r.json()["message"] == "k must be an integer, got NoneType None", r.text
    r = http.post("/v1/search?k=", content=q.read_bytes(), headers=raw)
    assert r.status_code == 200 and len(r.json()["hits"]) == 10, r.text
    assert "Traceback" not in main_server.log


def test_hit_images_come_from_the_archive_root_only(http, served, sample_dir, tmp_path):
    rel = served.paths[3].relative_to(sample_dir).as_posix()
    for path in (str(served.paths[3]), rel):
        r = http.get("/v1/image", params={"path": path}, headers=auth(READ))
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert r.content == served.paths[3].read_bytes()
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(served.paths[3].read_bytes())
    escapes = ["../README.md", f"{rel}/../../../../etc/passwd", "../../pyproject.toml",
               "../" * 12 + "etc/passwd", str(outside), "/etc/passwd", "Forest/../../README.md",
               "Forest/%2e%2e/%2e%2e/README.md", "README.md", "", "Forest"]
    for path in escapes:
        r = http.get("/v1/image", params={"path": path}, headers=auth(READ))
        assert r.status_code in (404, 422) and r.status_code != 200, path
        if r.status_code == 404:
            assert r.json() == {"error": "NotFoundError", "message": "no such image in the archive"}
    assert http.get("/v1/image", params={"path": rel}).status_code == 401


def test_add_get_delete_count_roundtrip(http, served):
    n0 = served.expected["count"]
    q = served.expected["queries"][1]
    codes = served.expected["codes"]
    r = http.post("/v1/items", headers=auth(WRITE), files=[("image", ("a.jpg", q.read_bytes()))],
                  data={"ids": json.dumps(["new/one"]), "labels": json.dumps(["Mine"]),
                        "metadata": json.dumps([{"year": 2024, "name": "Forêt \"1\""}])})
    assert r.status_code == 200, r.text
    assert r.json() == {"written": 1, "count": n0 + 1}
    body = {"ids": ["new/two", "new/three"], "labels": ["A", "B"],
            "codes": [base64.b64encode(c.tobytes()).decode() for c in codes[:2]]}
    r = http.post("/v1/codes", headers=auth(WRITE), json=body)
    assert r.json() == {"written": 2, "count": n0 + 3}
    r = http.post("/v1/items/get", headers=auth(READ), json={"ids": ["new/three", "nope", "new/one"]})
    items = r.json()["items"]
    assert [it["id"] for it in items] == ["new/three", "new/one"]
    assert base64.b64decode(items[0]["code"]) == codes[1].tobytes()
    assert items[1]["metadata"] == {"year": 2024, "name": "Forêt \"1\""} and items[1]["label"] == "Mine"
    assert http.get("/v1/items/new/two", headers=auth(READ)).json()["label"] == "A"
    assert http.get("/v1/items/new/zzz", headers=auth(READ)).status_code == 404
    hits = http.post("/v1/search", content=q.read_bytes(), headers=auth(READ),
                     params={"filter": json.dumps({"label": "Mine"})}).json()["hits"]
    assert [h["id"] for h in hits] == ["new/one"] and hits[0]["distance"] == 0
    r = http.get("/v1/count", params={"filter": json.dumps({"label": ["A", "B"]})}, headers=auth(READ))
    assert r.json() == {"count": 2}
    r = http.post("/v1/codes", headers=auth(WRITE), json={"ids": ["bad"], "codes": ["AAAA"]})
    assert r.status_code == 422 and r.json()["error"] == "CodeLengthError"
    r = http.post("/v1/items", headers=auth(WRITE), files=[("image", ("x", b"junk"))],
                  data={"ids": '["junk"]'})
    assert r.status_code == 422 and r.json()["error"] == "ImageLoadError"
    assert "upload 'x'" in r.json()["message"]
    r = http.post("/v1/items/delete", headers=auth(WRITE), json={"ids": ["new/one", "new/two", "nope"]})
    assert r.json() == {"deleted": 2, "count": n0 + 1}
    assert http.delete("/v1/items/new/three", headers=auth(WRITE)).json() == {"deleted": 1, "count": n0}
    assert http.get("/v1/count", headers=auth(READ)).json() == {"count": n0}


def test_info_health_metrics_openapi(http, served, main_server):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert ready["status"] == "ready" and ready["count"] == served.expected["count"]
    info = http.get("/v1/info", headers=auth(READ)).json()
    from rsir_sdk import Bundle

    b = Bundle.load(served.bundle)
    assert (info["collection"], info["method"], info["bits"], info["encoder_id"]) == \
        ("scenes", b.method, b.bits, b.encoder_id)
    assert info["auth"] is True and info["limits"]["max_k"] == 100
    assert info["limits"]["expressions"] is True and info["limits"]["index"] is False
    assert "uri" not in info and info["exists"] is True    # the store's address stays on the server
    assert info["archive_root"].endswith("eurosat")
    http.post("/v1/search", content=b"junk", headers=auth(READ))
    text = http.get("/metrics", headers=auth(READ)).text
    assert 'rsir_requests_total{route="/v1/search",method="POST",status="200"}' in text
    assert 'rsir_request_duration_seconds_bucket{route="/v1/search",le="+Inf"}' in text
    assert 'rsir_errors_total{kind="ImageLoadError"}' in text
    assert f"rsir_items {served.expected['count']}" in text
    assert "rsir_work_running" in text
    assert http.get("/metrics").status_code == 401
    spec = http.get("/openapi.json").json()
    for path in ("/v1/search", "/v1/search/batch", "/v1/search/codes", "/v1/items", "/v1/codes",
                 "/v1/items/delete", "/v1/items/get", "/v1/count", "/v1/info", "/v1/image",
                 "/healthz", "/readyz", "/metrics", "/v1/index", "/v1/learned", "/v1/prepare"):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "image/*"} <= set(body)
    page = http.get("/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    assert np.isfinite(float(text.split("rsir_request_duration_seconds_sum")[1].split()[1]))
