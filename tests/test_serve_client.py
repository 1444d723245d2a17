"""`RemoteRetriever` against a real `rsir serve`: the same hits and exception classes as the
in-process `Retriever`; with a local bundle (the edge path) only packed codes travel."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

pytest.register_assert_rewrite("serve_support")
from serve_support import READ, ROOT, WRITE  # noqa: E402

from rsir_sdk.errors import (  # noqa: E402
    CodeLengthError,
    CollectionMismatchError,
    ImageLoadError,
    InvalidInputError,
    RsirError,
)
from rsir_sdk.retriever import Hit  # noqa: E402
from rsir_sdk.serve.client import HttpOptions, RemoteRetriever  # noqa: E402
from rsir_sdk.serve.errors import (  # noqa: E402
    AuthenticationError,
    ForbiddenError,
    InvalidRequestError,
    PayloadTooLargeError,
    ServiceConnectionError,
    ServiceTimeoutError,
)

pytest_plugins = ["serve_support"]


def body_bytes(server_url: str, route: str) -> int:
    import httpx

    text = httpx.get(server_url + "/metrics", headers={"Authorization": f"Bearer {READ}"}).text
    for line in text.splitlines():
        if line.startswith(f'rsir_request_body_bytes_total{{route="{route}"}}'):
            return int(line.split()[-1])
    return 0


def test_uploads_give_the_in_process_hits(main_server, served, image_host, sample_dir):
    exp = served.expected
    with RemoteRetriever(main_server.url, token=READ) as r:
        assert r.count() == exp["count"]
        for i, q in enumerate(exp["queries"]):
            hits = r.search(q, k=10)
            assert hits == exp["search"][i] and all(isinstance(h, Hit) for h in hits)
            assert r.search(q.read_bytes(), k=30, filter={"label": "Forest"}) == exp["forest"][i]
            assert r.search(Image.open(q), k=50, radius=12) == exp["radius"][i]
            url = f"{image_host}/{q.relative_to(sample_dir).as_posix()}"
            assert r.search(url, k=10) == exp["search"][i]
        assert r.last_request_bytes > 0
        assert r.search_batch(exp["queries"], k=7) == exp["batch"]
        # URLs in a batch (no local bundle): read as local file names before ("no such file");
        # mixed with files and in runs longer than the service's max batch, order kept
        urls = [f"{image_host}/{q.relative_to(sample_dir).as_posix()}" for q in exp["queries"]]
        mixed = [u if i % 3 else q for i, (u, q) in enumerate(zip(urls, exp["queries"]))]
        assert r.search_batch(mixed, k=7) == exp["batch"]
        assert r.search_batch(urls * 3, k=7) == exp["batch"] * 3
        assert r.search_codes(exp["codes"], k=10) == exp["by_codes"]
        assert r.search_codes(exp["codes"][0].tobytes(), k=10) == exp["by_codes"][:1]
        assert r.count(filter={"label": "Forest"}) == 20
        items = r.get([served.ids[5], "missing"])
        assert [it.id for it in items] == [served.ids[5]] and items[0].label == served.labels[5]
        assert np.array_equal(items[0].code, r.get([served.ids[5]])[0].code)


def test_edge_client_sends_codes_only_and_matches_the_server_encoding(main_server, served):
    exp = served.expected
    bits = 64
    with RemoteRetriever(main_server.url, token=READ, bundle=served.bundle) as edge, \
            RemoteRetriever(main_server.url, token=READ) as upload:
        before = body_bytes(main_server.url, "/v1/search/codes")
        for i, q in enumerate(exp["queries"]):
            hits = edge.search(q, k=10)
            assert edge.last_request_bytes == bits // 8            # one code: 8 bytes on the wire
            assert hits == upload.search(q, k=10) == exp["search"][i]
            assert upload.last_request_bytes == q.stat().st_size   # the image file itself
        assert body_bytes(main_server.url, "/v1/search/codes") - before == len(exp["queries"]) * 8
        assert edge.search_batch(exp["queries"], k=7) == exp["batch"]
        assert edge.last_request_bytes == len(exp["queries"]) * bits // 8


def test_codes_sent_without_a_bundle_can_name_their_encoder(main_server, served):
    """A device that encodes on its own had no way to say which model made its codes: another
    model's codes were searched (and stored) without a word. ``encoder_id=`` sends it."""
    from rsir_sdk import Bundle

    own = Bundle.load(served.bundle).encoder_id
    code = np.zeros((2, 8), np.uint8)
    with RemoteRetriever(main_server.url, token=READ, encoder_id=own) as right:
        assert len(right.search_codes(code, k=3)) == 2
    with RemoteRetriever(main_server.url, token=READ, encoder_id="0123456789abcdef") as other:
        with pytest.raises(CollectionMismatchError):
            other.search_codes(code, k=3)
    with pytest.raises(InvalidInputError, match="encoder_id must be"):
        RemoteRetriever(main_server.url, token=READ, encoder_id="bad\nid")
    with pytest.raises(InvalidInputError, match="is not the bundle's"):
        RemoteRetriever(main_server.url, token=READ, bundle=served.bundle,
                        encoder_id="0123456789abcdef")


def test_edge_writes_and_deletes(main_server, served, image_host, sample_dir):
    n0 = served.expected["count"]
    q = served.expected["queries"][2]
    with RemoteRetriever(main_server.url, token=WRITE, bundle=served.bundle) as edge:
        assert edge.add_images([q], ids=["edge/1"], labels=["EdgeLabel"], metadata=[{"dev": "a"}]) == 1
        assert edge.count() == n0 + 1
        hits = edge.search(q, k=3, filter={"label": "EdgeLabel"})
        assert [(h.id, h.distance, h.metadata) for h in hits] == [("edge/1", 0, {"dev": "a"})]
        assert edge.delete(["edge/1", "nope"]) == 1
    with RemoteRetriever(main_server.url, token=WRITE) as plain:
        paths = [str(p) for p in served.paths[:10]]             # 10 images > max batch 8: split
        assert plain.add_images(paths, ids=[f"up/{i}" for i in range(10)]) == 10
        assert plain.count() == n0 + 10
        assert plain.delete([f"up/{i}" for i in range(10)]) == 10
        assert plain.count() == n0
        # URLs the service downloads, between files (read as file names before)
        urls = [f"{image_host}/{p.relative_to(sample_dir).as_posix()}" for p in served.paths[:3]]
        sources = [urls[0], paths[1], urls[1], urls[2]]
        ids = [f"url/{i}" for i in range(4)]
        assert plain.add_images(sources, ids=ids, labels=["A", "B", "C", "D"]) == 4
        got = {it.id: it for it in plain.get(ids)}
        assert [got[i].label for i in ids] == ["A", "B", "C", "D"]
        stored = {it.id: it.code for it in plain.get([served.ids[i] for i in range(3)])}
        assert np.array_equal(got["url/0"].code, stored[served.ids[0]])
        assert np.array_equal(got["url/3"].code, stored[served.ids[2]])
        assert plain.delete(ids) == 4
        assert plain.count() == n0


def test_filters_the_local_retriever_takes_the_service_takes(main_server, served):
    """A metadata key is any text in process (a CSV column "cloud-cover" becomes one) and a
    value may be None; the service refused both ("letters, digits or _", "values must be
    strings, numbers or booleans"), breaking the one API. Same filters, same answers now."""
    import httpx

    n0 = served.expected["count"]
    q = served.expected["queries"][1]
    meta = [{"cloud-cover": 5, "sensor": None}, {"cloud-cover": 7, "sensor": "S2"}]
    with RemoteRetriever(main_server.url, token=WRITE, bundle=served.bundle) as edge:
        assert edge.add_images([q, q], ids=["f/1", "f/2"], metadata=meta) == 2
        try:
            for flt, expected in (({"cloud-cover": 5}, ["f/1"]), ({"sensor": None}, ["f/1"]),
                                  ({"cloud-cover": [5, 7]}, ["f/1", "f/2"]),
                                  ({"sensor": [None, "S2"]}, ["f/1", "f/2"])):
                assert sorted(h.id for h in edge.search(q, k=5, filter=flt)) == expected, flt
                assert edge.count(filter=flt) == len(expected), flt
            r = httpx.get(main_server.url + "/v1/count", headers={"Authorization": f"Bearer {READ}"},
                          params={"filter": json.dumps({"sensor": None, "cloud-cover": 5})})
            assert r.status_code == 200 and r.json()["count"] == 1, r.text
            with pytest.raises(InvalidInputError, match="filter"):
                edge.count(filter={"sensor": {"nested": 1}})
        finally:
            assert edge.delete(["f/1", "f/2"]) == 2
        assert edge.count() == n0


def test_a_code_of_the_wrong_length_reads_as_in_process(main_server, served):
    """Without a local bundle the client checked codes against no length: b'' said "bits must
    be a multiple of 8 ... got 0" where Retriever says how many bits were expected."""
    with RemoteRetriever(main_server.url, token=READ) as r:
        for bad in (b"", bytes(7)):
            with pytest.raises(CodeLengthError, match="64 bits were expected"):
                r.search_codes(bad)


def test_errors_map_back_to_the_python_classes(main_server, served, serve_bundles, tmp_path):
    q = served.expected["queries"][0]
    with RemoteRetriever(main_server.url, token=READ) as r:
        with pytest.raises(ImageLoadError) as err:
            r.search(b"definitely not an image")
        assert err.value.reason.startswith("not an image in a supported format") and err.value.status == 422
        with pytest.raises(ImageLoadError, match="no such file"):
            r.search(tmp_path / "missing.jpg")
        with pytest.raises(CodeLengthError):
            r.search_codes(np.zeros((1, 4), np.uint8))
        with pytest.raises(ValueError, match="k must be between 1 and 100"):
            r.search(q, k=500)
        assert r.search(q, k=30, filter='label == "Forest"') == served.expected["forest"][0]
        with pytest.raises(InvalidInputError, match="invalid filter expression"):
            r.search(q, filter="label ==")                   # refused by the service's store
        sent = r.bytes_sent
        with pytest.raises(InvalidInputError, match="k must be between 1 and 16384"):
            r.search(q, k=0)
        assert r.bytes_sent == sent                          # refused here, before any upload
        with pytest.raises(ForbiddenError) as err:
            r.add_codes(np.zeros((1, 8), np.uint8), ["x"])
        assert isinstance(err.value, PermissionError) and isinstance(err.value, RsirError)
        with pytest.raises(PayloadTooLargeError):
            r.search(b"\xff\xd8" + bytes(70_000))
    with pytest.raises(AuthenticationError):
        RemoteRetriever(main_server.url).count()
    with pytest.raises(CollectionMismatchError, match="not comparable"):
        RemoteRetriever(main_server.url, token=READ, bundle=serve_bundles[1])


def test_a_service_without_expressions_or_index_refuses_them_alike(served, tmp_path):
    from serve_support import COLLECTION, ServerProcess, copy_db

    server = ServerProcess([served.bundle, "--uri", copy_db(served.db, tmp_path), "--collection",
                            COLLECTION, "--no-expressions"], tmp_path / "serve.log")
    try:
        q = served.expected["queries"][0]
        with RemoteRetriever(server.url) as r:
            info = r.info()
            assert info["limits"]["expressions"] is False and info["limits"]["index"] is False
            with pytest.raises(InvalidRequestError, match="--no-expressions") as err:
                r.search(q, k=30, filter='label == "Forest"')
            assert isinstance(err.value, ValueError)
            with pytest.raises(InvalidRequestError, match="--no-expressions"):
                r.count('label == "Forest"')
            assert r.search(q, k=30, filter={"label": "Forest"}) == served.expected["forest"][0]
            with pytest.raises(ForbiddenError, match="--allow-index"):
                r.index("Forest", label_from="parent")
            assert r.count() == served.expected["count"]
    finally:
        assert server.stop() == 0, server.log[-3000:]


def test_connection_errors_are_retried_then_raised():
    with socket.socket() as s:                       # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = RemoteRetriever(f"http://127.0.0.1:{port}",
                        http=HttpOptions(retries=2, backoff=0.05, timeout=2))
    t0 = time.perf_counter()
    with pytest.raises(ServiceConnectionError, match="after 3 attempts") as err:
        r.count()
    assert isinstance(err.value, ConnectionError) and time.perf_counter() - t0 < 5


def test_a_read_that_gets_no_answer_says_nothing_of_writes():
    """A count, search or info request that timed out was told "a write may have been applied
    meanwhile"; a write still is."""
    with socket.socket() as silent:                  # takes connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        r = RemoteRetriever(url, http=HttpOptions(retries=1, backoff=0.05, timeout=0.3))
        with pytest.raises(ServiceTimeoutError, match="after 2 attempts") as err:
            r.count()
        assert "write" not in str(err.value), err.value
        with pytest.raises(ServiceTimeoutError, match="a write may have been applied"):
            r._transport.request("POST", "/v1/codes", json_body={"ids": ["a"], "codes": ["AAAA"]})


def test_a_service_that_drips_its_answer_is_cut_off_at_the_timeout():
    """``timeout`` bounds the whole answer: a server sending one byte every 0.3 s (each wait
    well under httpx's read timeout) is cut off after ~timeout, not after the ~40 s its answer
    takes; bad timeouts are one line before any request."""
    import threading

    body = b'{"count": ' + b"1" * 120 + b"}"
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    stop = threading.Event()

    def drip() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body))
                for byte in body:
                    if stop.is_set():
                        return
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break
                    time.sleep(0.3)

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        r = RemoteRetriever(f"http://127.0.0.1:{srv.getsockname()[1]}", timeout=1.5, retries=0)
        t0 = time.perf_counter()
        with pytest.raises(ServiceTimeoutError, match="no answer .* in time"):
            r.count()
        assert time.perf_counter() - t0 < 15     # the whole answer would take ~40 s
        r.close()
    finally:
        stop.set()
        srv.close()
    for bad in (0, -1, float("inf"), float("nan"), "5"):
        with pytest.raises(InvalidInputError, match="timeout must be a finite number"):
            RemoteRetriever("http://127.0.0.1:9", timeout=bad)


def test_a_slow_upload_is_not_cut_off_by_the_answer_deadline():
    """The whole-answer deadline starts when the answer's headers arrive: an upload that takes
    longer than ``timeout`` (a big batch on a slow link) but is answered at once succeeds, as
    it did before the deadline existed (a first version counted the upload and failed it)."""
    import threading

    from rsir_sdk.serve.transport import HttpOptions as Options
    from rsir_sdk.serve.transport import HttpTransport

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    size = 32 * 1024 * 1024

    def slow_reader() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            got = b""
            while b"\r\n\r\n" not in got:
                got += conn.recv(65536)
            body = len(got.split(b"\r\n\r\n", 1)[1])
            while body < size:
                body += len(conn.recv(65536))
                time.sleep(0.006)                   # about 3 s for the whole upload
            answer = b'{"ok": true}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))

    thread = threading.Thread(target=slow_reader, daemon=True)
    thread.start()
    transport = HttpTransport(f"http://127.0.0.1:{srv.getsockname()[1]}", None,
                              Options(timeout=1.5, retries=0))
    try:
        t0 = time.perf_counter()
        assert transport.request("POST", "/v1/codes", content=b"x" * size) == {"ok": True}
        assert time.perf_counter() - t0 > 1.5       # the upload did take longer than timeout
    finally:
        transport.close()
        srv.close()


def test_a_url_that_is_not_an_rsir_service_is_said_to_be_so(tmp_path):
    """A plain web server at the URL (or the base URL with /v1 appended): one line naming the
    URL and asking whether it is rsir serve's base URL, not a bare "HTTP 404" or a crash on a
    page that is not JSON."""
    import functools
    import http.server
    import threading

    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "count").write_text("<html>a web page</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with RemoteRetriever(url, retries=0) as r:
            with pytest.raises(RsirError, match=r"HTTP 404 from .*/v1/info is not an rsir "
                                                r"service's answer: is .* the base URL"):
                r.info()
            with pytest.raises(RsirError, match=r"/v1/count is not an rsir service's \(no JSON"):
                r.count()
    finally:
        httpd.shutdown()
        httpd.server_close()


EDGE = textwrap.dedent("""
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        # an edge box: no server side, no Milvus client, no training stack
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"fastapi", "starlette", "uvicorn", "pymilvus", "milvus_lite",
                                      "grpc", "torch", "onnx", "export", "multipart"}:
                raise ImportError(f"{name} is not installed on this edge box")

    sys.meta_path.insert(0, Block())
    from rsir_sdk.serve.client import RemoteRetriever
    with RemoteRetriever(sys.argv[1], token=sys.argv[2], bundle=sys.argv[3]) as r:
        hits = r.search(sys.argv[4], k=3)
        print(json.dumps({"ids": [h.id for h in hits], "sent": r.last_request_bytes}))
""")


def test_edge_client_runs_without_the_server_stack(main_server, served):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    q = served.expected["queries"][3]
    out = subprocess.run([sys.executable, "-c", EDGE, main_server.url, READ, str(served.bundle), str(q)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"ids": [h.id for h in served.expected["search"][3][:3]], "sent": 8}


def test_an_upload_larger_than_one_request_says_what_earlier_requests_wrote(served, tmp_path):
    """Six images through a service taking four per request, the fifth unreadable: the first
    request's four were written, then the error came, without a word of them (Retriever,
    which checks every image first, writes none); the error now counts them."""
    from serve_support import COLLECTION, ServerProcess, copy_db

    server = ServerProcess([served.bundle, "--uri", copy_db(served.db, tmp_path), "--collection",
                            COLLECTION, "--max-batch", 4], tmp_path / "serve.log")
    try:
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"not an image")
        images = [*served.paths[:4], bad, served.paths[4]]
        ids = [f"up/{i}" for i in range(6)]
        with RemoteRetriever(server.url) as r:
            with pytest.raises(ImageLoadError, match=r"\(4 of the 6 images were written by "
                                                     r"earlier requests; writing them again is "
                                                     r"safe\)") as err:
                r.add_images(images, ids=ids)
            assert err.value.written == 4 and "bad.jpg" in err.value.source
            assert [it.id for it in r.get(ids)] == ids[:4]
            # an image this side cannot read, in a later request: counted alike
            odd = np.zeros((8, 8, 3), np.int64)
            with pytest.raises(ImageLoadError, match=r"\(4 of the 5 images were written") as err:
                r.add_images([*served.paths[5:9], odd], ids=[f"late/{i}" for i in range(5)])
            assert err.value.written == 4
    finally:
        assert server.stop() == 0, server.log[-3000:]


def test_uploads_are_split_under_the_services_body_limit(served, tmp_path):
    """search_batch cut uploads by the service's max batch only: three images over the body
    limit together went in one request and got 413, though the limit is in /v1/info."""
    from serve_support import COLLECTION, ServerProcess, copy_db

    rng = np.random.default_rng(0)
    noise = []
    for i in range(3):                                   # about 67 KB each as PNG
        path = tmp_path / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)).save(path)
        noise.append(path)
    server = ServerProcess([served.bundle, "--uri", copy_db(served.db, tmp_path), "--collection",
                            COLLECTION, "--max-upload-bytes", 160_000], tmp_path / "serve.log")
    try:
        with RemoteRetriever(server.url) as r:
            alone = [r.search(p, k=3) for p in noise]
            assert r.search_batch(noise, k=3) == alone
            assert r.add_images(noise, ids=["n0", "n1", "n2"]) == 3
    finally:
        assert server.stop() == 0, server.log[-3000:]


def test_code_searches_are_cut_into_requests_that_end_well_inside_the_time_limit():
    """Requests of the service's max_codes (10,000 codes: ~50 s at 585k items) were all 504s at
    its 30 s limit; the client now sizes each request by the pace of the one before."""
    from rsir_sdk.serve.wire import PacedParts

    sizes, seen = [], []
    for part in PacedParts(200, most=100, budget_s=0.1, first=4):
        sizes.append(part.stop - part.start)
        seen += range(part.start, part.stop)
        time.sleep(0.01 * sizes[-1])                  # 10 ms an item: 10 items fit in 0.1 s
    assert seen == list(range(200)) and sizes[0] == 4
    assert all(5 <= s <= 11 for s in sizes[1:-1]), sizes      # timing noise either way
    quick = [p.stop - p.start for p in PacedParts(50, most=20, budget_s=10.0, first=4)]
    assert quick[0] == 4 and quick[1:] == [20, 20, 6]         # fast: up to the service's bound
