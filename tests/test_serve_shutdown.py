"""SIGTERM with requests in flight: they finish (or fail cleanly, never half-done), the process
exits 0, and the Milvus Lite file reopens with exactly the items whose adds were acknowledged."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

pytest.register_assert_rewrite("serve_support")
from serve_support import COLLECTION, ServerProcess, copy_db  # noqa: E402

from rsir_sdk import Retriever  # noqa: E402
from rsir_sdk.serve.client import HttpOptions, RemoteRetriever  # noqa: E402
from rsir_sdk.serve.errors import ServiceBusyError, ServiceConnectionError  # noqa: E402

pytest_plugins = ["serve_support"]

CLEAN = (ServiceConnectionError, ServiceBusyError)   # refused before any work was done


def test_sigterm_lets_in_flight_requests_finish(served, image_host, tmp_path):
    db = copy_db(served.db, tmp_path)
    server = ServerProcess([served.bundle, "--uri", db, "--collection", COLLECTION,
                            "--concurrency", 2, "--allow-private-urls"], tmp_path / "serve.log")
    base = served.expected["count"]
    rng = np.random.default_rng(0)
    stop_at = time.monotonic() + 30
    term_sent = threading.Event()
    lock = threading.Lock()
    attempted, acked, outcomes, slow_done = set(), set(), [], []
    unclean: list[BaseException] = []

    def worker(n: int) -> None:
        r = RemoteRetriever(server.url, http=HttpOptions(retries=1, backoff=0.05, timeout=30))
        i = 0
        while time.monotonic() < stop_at:
            i += 1
            kind = ("slow", "add", "search")[(n + i) % 3]
            try:
                if kind == "slow":
                    t0 = time.monotonic()
                    hits = r.search(f"{image_host}/slow/1.0/Forest/Forest_1001.jpg", k=3)
                    assert hits[0].label == "Forest"
                    with lock:
                        slow_done.append((t0, time.monotonic()))
                elif kind == "add":
                    ids = [f"t{n}/{i}/{j}" for j in range(5)]
                    with lock:
                        attempted.update(ids)
                    r.add_codes(rng.integers(0, 256, (5, 8), dtype=np.uint8), ids)
                    with lock:
                        acked.update(ids)
                else:
                    r.search(served.expected["queries"][n % 5], k=5)
                outcomes.append("ok")
            except CLEAN:
                outcomes.append("refused")
                if term_sent.is_set():
                    return
            except BaseException as exc:  # anything else is a failure of the test
                unclean.append(exc)
                return

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.6)
    t_term = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    term_sent.set()
    for t in threads:
        t.join(60)
    status = server.proc.wait(60)     # one SIGTERM only: the service must exit by itself
    server.stop()
    assert not unclean, unclean
    assert status == 0, server.log[-3000:]
    assert "closed collection" in server.log and "Traceback" not in server.log
    in_flight = [1 for t0, t1 in slow_done if t0 < t_term < t1]
    assert in_flight, "no slow request was in flight at SIGTERM"   # ... and each one finished
    assert "refused" in outcomes and outcomes.count("ok") > 5
    with Retriever(served.bundle, uri=str(db), collection=COLLECTION) as r:
        present = {it.id for it in r.store.get(sorted(attempted))}
        assert acked <= present <= attempted
        assert r.count() == base + len(present)
        hits = r.search(served.expected["queries"][0], k=10)
        originals = [h for h in hits if h.id not in attempted]   # random codes may rank in
        assert originals == served.expected["search"][0][: len(originals)] and originals


def test_a_second_ctrl_c_forces_the_exit_without_a_traceback(served, image_host, tmp_path):
    """serve.md: "a second Ctrl-C forces the exit". It waited for a URL download in flight (up
    to --url-timeout), logged uvicorn's CancelledError tracebacks and answered a plain-text
    500. Now: out at once, exit status 130, the request answered in JSON or cut, no traceback."""
    import httpx

    server = ServerProcess([served.bundle, "--uri", copy_db(served.db, tmp_path), "--collection",
                            COLLECTION, "--allow-private-urls", "--url-timeout", 40,
                            "--request-timeout", 60], tmp_path / "serve.log")
    answers: list[object] = []

    def slow() -> None:
        try:
            answers.append(httpx.post(server.url + "/v1/search", timeout=60, json={
                "url": f"{image_host}/slow/30/Forest/Forest_1001.jpg"}))
        except httpx.HTTPError as exc:  # the connection cut by the exit: also clean
            answers.append(exc)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(1.5)                              # the download is in flight
    server.proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    status = server.proc.wait(30)
    took = time.monotonic() - t0
    t.join(30)
    server.stop()
    log = server.log
    assert status == 130 and took < 10, (status, took, log[-2000:])
    assert "forced exit: 1 call(s) in flight abandoned" in log, log[-2000:]
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    answer = answers[0]
    if isinstance(answer, httpx.Response):
        assert answer.status_code == 503 and answer.json()["error"] == "ServiceBusyError", answer.text


def test_sigterm_while_a_body_is_still_arriving_answers_json_without_a_traceback(served,
                                                                                  tmp_path):
    """A request still reading its body when the graceful shutdown timed out was cancelled by
    uvicorn: a plain-text 500 to the client and "Exception in ASGI application" with a
    CancelledError traceback in the log. Now a JSON 503, a clean log, exit 0."""
    import json
    import socket

    server = ServerProcess([served.bundle, "--uri", copy_db(served.db, tmp_path), "--collection",
                            COLLECTION, "--request-timeout", 1, "--body-timeout", 60],
                           tmp_path / "serve.log")
    host, port = server.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
              b"Content-Length: 1000\r\n\r\n\x89PNG")
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    answer = b""
    with s:
        while True:
            try:
                part = s.recv(4096)
            except OSError:
                break
            if not part:
                break
            answer += part
    status = server.proc.wait(30)
    server.stop()
    log = server.log
    assert status == 0, log[-2000:]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and json.loads(body)["error"] == "ServiceBusyError", answer
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def test_a_search_past_its_time_limit_holds_the_exit_no_longer_than_the_grace(served, image_host,
                                                                              tmp_path):
    """The grace (--request-timeout + 5 s) counted twice: the HTTP server waited for the 504,
    then the app waited the whole grace again for the search's thread (50 s for 35 s)."""
    db = copy_db(served.db, tmp_path)
    server = ServerProcess([served.bundle, "--uri", db, "--collection", COLLECTION,
                            "--allow-private-urls", "--request-timeout", 6, "--url-timeout", 60],
                           tmp_path / "serve.log")
    answers: list[object] = []

    def slow_search() -> None:  # a download that outlasts every limit but --url-timeout
        r = RemoteRetriever(server.url, http=HttpOptions(retries=0, timeout=60))
        try:
            answers.append(r.search(f"{image_host}/slow/40/Forest/Forest_1001.jpg", k=3))
        except Exception as exc:  # the 504 (or the connection closed by the stop)
            answers.append(exc)

    t = threading.Thread(target=slow_search)
    t.start()
    time.sleep(1.0)
    t_term = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    status = server.proc.wait(60)
    took = time.monotonic() - t_term
    t.join(60)
    server.stop()
    assert status == 0, server.log[-3000:]
    assert took <= 6 + 5 + 2.5, f"exited {took:.1f} s after SIGTERM (grace 11 s)"
    assert answers and isinstance(answers[0], Exception), answers
