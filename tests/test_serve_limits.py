"""Limits and safety of `rsir serve`: the bounded queue (503 + Retry-After), the request time
limit (504), client retries, refusing to bind a public address without a token, auth rules,
archive-root confinement, redaction, and the error-kind table both ways."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.register_assert_rewrite("serve_support")
from serve_support import COLLECTION, ServerProcess, copy_db  # noqa: E402

from rsir_sdk import errors as core  # noqa: E402
from rsir_sdk.redact import redact_text, redact_uri  # noqa: E402
from rsir_sdk.serve import cli  # noqa: E402
from rsir_sdk.serve.auth import READ, WRITE, RedactingFilter, TokenAuth, is_loopback  # noqa: E402
from rsir_sdk.serve.client import HttpOptions, RemoteRetriever  # noqa: E402
from rsir_sdk.serve.config import ServeConfig  # noqa: E402
from rsir_sdk.serve.errors import (  # noqa: E402
    AuthenticationError,
    ForbiddenError,
    NotFoundError,
    ServiceBusyError,
    ServiceTimeoutError,
    classify,
    error_body,
    exception_for,
)
from rsir_sdk.serve.files import resolve_in_root  # noqa: E402
from rsir_sdk.serve.metrics import Metrics  # noqa: E402

pytest_plugins = ["serve_support"]


def gauge(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def tight_server(served, tmp_path_factory):
    """One worker, one waiting place, 2.5 s per request; no tokens (loopback)."""
    d = tmp_path_factory.mktemp("tight")
    server = ServerProcess([served.bundle, "--uri", copy_db(served.db, d), "--collection",
                            COLLECTION, "--concurrency", 1, "--max-queue", 1,
                            "--request-timeout", 2.5, "--allow-private-urls"], d / "serve.log")
    yield server
    assert server.stop() == 0, server.log[-3000:]


def test_full_queue_answers_503_and_clients_retry(tight_server, image_host, served):
    url = tight_server.url
    q = served.expected["queries"][0].read_bytes()
    results: dict[str, httpx.Response] = {}

    def call(name: str, **kw) -> None:
        results[name] = httpx.post(url + "/v1/search", timeout=30, **kw)

    slow = threading.Thread(target=call, args=("slow",),
                            kwargs={"json": {"url": f"{image_host}/slow/1.5/Forest/Forest_1001.jpg"}})
    slow.start()
    wait_for(lambda: gauge(url, "rsir_work_running") == 1)
    queued = threading.Thread(target=call, args=("queued",), kwargs={"content": q})
    queued.start()
    wait_for(lambda: gauge(url, "rsir_work_waiting") == 1)
    busy = httpx.post(url + "/v1/search", content=q, timeout=30)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"] == "ServiceBusyError"
    with pytest.raises(ServiceBusyError) as err:                  # no retries: the class
        RemoteRetriever(url, retries=0).search(q)
    assert err.value.retry_after == 1.0
    t0 = time.perf_counter()
    hits = RemoteRetriever(url, http=HttpOptions(retries=5, backoff=0.1, max_backoff=1.0)).search(q, k=10)
    assert hits == served.expected["search"][0]                   # served once a place freed
    assert time.perf_counter() - t0 >= 0.9                        # it waited (Retry-After: 1)
    slow.join(30)
    queued.join(30)
    assert results["slow"].status_code == 200 and results["queued"].status_code == 200
    assert results["queued"].json()["hits"][0]["id"] == served.ids[0]
    assert gauge(url, "rsir_work_rejected_total") >= 2


def test_request_time_limit_answers_504(tight_server, image_host):
    url = tight_server.url
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/search", json={"url": f"{image_host}/slow/3.5/River/River_1011.jpg"},
                   timeout=30)
    assert r.status_code == 504 and r.json()["error"] == "ServiceTimeoutError"
    assert 2.4 < time.perf_counter() - t0 < 3.4
    assert isinstance(exception_for(504, r.json()), ServiceTimeoutError)
    wait_for(lambda: gauge(url, "rsir_work_running") == 0)        # its slot is kept until it ends
    assert httpx.get(url + "/readyz").status_code == 200


def _hold_the_worker(url: str, image_host: str, seconds: float) -> threading.Thread:
    """A search whose image download holds the tight server's one worker for ``seconds``."""
    slow = threading.Thread(target=lambda: httpx.post(
        url + "/v1/search", json={"url": f"{image_host}/slow/{seconds}/Forest/Forest_1001.jpg"},
        timeout=30))
    slow.start()
    wait_for(lambda: gauge(url, "rsir_work_running") == 1)
    return slow


def test_a_request_timed_out_while_waiting_for_a_worker_is_never_run(tight_server, image_host):
    """A 504 was sent while the request still waited in the queue, and the write ran later
    anyway (an item added after its client was told it timed out); now a request that had
    not started when its time ran out is dropped, and its answer says which case it was."""
    import base64

    url = tight_server.url
    slow = _hold_the_worker(url, image_host, 4.0)
    late = httpx.post(url + "/v1/codes", timeout=30, json={
        "ids": ["late-write"], "codes": [base64.b64encode(bytes(8)).decode()]})
    assert late.status_code == 504 and "was not run" in late.json()["message"], late.text
    slow.join(30)
    wait_for(lambda: gauge(url, "rsir_work_running") == 0)
    assert RemoteRetriever(url).get(["late-write"]) == []
    timed = httpx.post(url + "/v1/search", timeout=30, json={
        "url": f"{image_host}/slow/3.5/Forest/Forest_1001.jpg"})       # started, then too long
    message = timed.json()["message"]
    assert timed.status_code == 504 and "runs on to its end" in message
    # a search is told how to answer sooner, not that "a write may still be applied"
    assert "write" not in message and "smaller request" in message, message
    wait_for(lambda: gauge(url, "rsir_work_running") == 0)


def test_a_delete_that_may_have_reached_the_service_is_not_sent_again(tight_server, image_host):
    """A delete retried after a client timeout answered 0 (the first attempt had deleted
    every item): now it is not sent again, and the error says it may have been applied."""
    url = tight_server.url
    r = RemoteRetriever(url, http=HttpOptions(timeout=1.0, retries=3, backoff=0.1))
    r.info()                                       # the limits, read before the worker is held
    slow = _hold_the_worker(url, image_host, 3.0)
    t0 = time.perf_counter()
    with pytest.raises(ServiceTimeoutError, match="may have been applied: not sent again"):
        r.delete(["no-such-item"])
    assert time.perf_counter() - t0 < 2.0                          # one attempt, no retries
    slow.join(30)
    wait_for(lambda: gauge(url, "rsir_work_running") == 0)


def test_public_address_needs_a_token_unless_insecure(served, capsys, monkeypatch):
    monkeypatch.delenv("RSIR_READ_TOKEN", raising=False)
    monkeypatch.delenv("RSIR_WRITE_TOKEN", raising=False)
    assert cli.main([str(served.bundle), "--host", "0.0.0.0"]) == 2
    assert "refusing to serve on 0.0.0.0" in capsys.readouterr().err
    assert cli.main([str(served.bundle), "--read-token", "same-token", "--write-token",
                     "same-token"]) == 2
    assert cli.main([str(served.bundle), "--max-k", "0"]) == 2


def test_missing_collection_is_refused_without_create(served, tmp_path):
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args([str(served.bundle), "--uri", str(tmp_path / "none.db"), "--collection", "x"])
    with pytest.raises(core.StoreError, match="--create"):
        cli.open_retriever(args)
    # a misspelt name: the collections that are there are named
    db = str(copy_db(served.db, tmp_path))
    args = p.parse_args([str(served.bundle), "--uri", db, "--collection", "scenez"])
    with pytest.raises(core.CollectionNotFoundError, match=f"collections there: {COLLECTION}"):
        cli.open_retriever(args)
    # --create makes the collection now: searches answer no hits (they answered 404 until the
    # first write), and the collection keeps fine codes as a first write would have made it
    args = p.parse_args([str(served.bundle), "--uri", db, "--collection", "fresh", "--create"])
    r = cli.open_retriever(args)
    try:
        assert r.store.exists and r.count() == 0
        assert r.search(served.expected["queries"][0], k=5) == []
        assert r.store.fine_bits == r.encoder.fine_bits
    finally:
        r.close()


def test_token_rules():
    both = TokenAuth("r-token", "w-token")
    both.check("Bearer r-token", READ)
    both.check("bearer w-token", READ)
    both.check("Bearer w-token", WRITE)
    with pytest.raises(ForbiddenError):
        both.check("Bearer r-token", WRITE)
    for header in (None, "", "Bearer", "Basic r-token", "Bearer r-tokenx", "r-token"):
        with pytest.raises(AuthenticationError):
            both.check(header, READ)
    one = TokenAuth(read_token="only")
    one.check("Bearer only", WRITE)                                   # one token for everything
    public_reads = TokenAuth(write_token="w")
    public_reads.check(None, READ)
    with pytest.raises(AuthenticationError):
        public_reads.check(None, WRITE)
    TokenAuth().check(None, WRITE)
    assert not TokenAuth().enabled and both.enabled
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_secrets_are_redacted():
    assert redact_uri("http://root:Milvus@db:19530") == "http://***@db:19530"
    assert redact_uri("./rsir.db") == "./rsir.db"
    assert redact_text("Milvus at https://u:p@h:443/x did not answer") == "Milvus at https://***@h:443/x did not answer"
    # a query secret: hidden whole, and the message's ": " after it kept (it was eaten)
    assert redact_text("cannot load image http://h.invalid/x.jpg?token=abc: cannot resolve") == \
        "cannot load image http://h.invalid/x.jpg?token=***: cannot resolve"
    assert redact_text("x?token=a:b&key=c.d (y)") == "x?token=***&key=*** (y)"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s and Authorization: Bearer abc",
                               ("s3cret-token",), None)
    RedactingFilter(["s3cret-token"]).filter(record)
    assert record.getMessage() == "token *** and Authorization: Bearer ***"


def test_archive_root_confines_paths(tmp_path):
    root = tmp_path / "archive"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"png")
    (root / "notes.txt").write_text("text")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    (root / "a" / "link.png").symlink_to(outside)                  # a link leading out
    (root / "a" / "inner.png").symlink_to(root / "a" / "x.png")   # a link staying inside
    root = root.resolve()
    assert resolve_in_root(root, "a/x.png") == root / "a" / "x.png"
    assert resolve_in_root(root, str(root / "a" / "x.png")) == root / "a" / "x.png"
    assert resolve_in_root(root, "a/inner.png") == root / "a" / "x.png"
    for bad in ("a/link.png", "../secret.png", str(outside), "a/../../secret.png", "notes.txt",
                "a", "", "a/x.png\x00", "missing.png"):
        with pytest.raises(NotFoundError):
            resolve_in_root(root, bad)
    with pytest.raises(NotFoundError):
        resolve_in_root(None, "a/x.png")


def test_error_kinds_round_trip():
    cases = [core.ImageLoadError("q.jpg", "corrupt"), core.CodeLengthError("bad"),
             core.CollectionMismatchError("other"), core.StoreError("down"), ValueError("k"),
             ServiceBusyError("busy", retry_after=2.0)]
    for name in ("CollectionNotFoundError", "RasterRuleMismatchError"):
        if hasattr(core, name):                                       # after the layout refactor
            cases.append(getattr(core, name)("x"))
    for exc in cases:
        kind, status = classify(exc)
        back = exception_for(status, error_body(kind, str(exc), exc), 2.0)
        assert type(back) is type(exc) and back.status == status
        assert str(back) == str(exc)
    assert classify(core.ImageLoadError("a", "b")) == ("ImageLoadError", 422)
    assert classify(core.CollectionMismatchError("x")) == ("CollectionMismatchError", 409)
    assert classify(core.StoreError("x")) == ("StoreError", 503)
    assert classify(KeyboardInterrupt()) == ("InternalError", 500)
    assert classify(RuntimeError("boom")) == ("InternalError", 500)


def test_metrics_text_format():
    m = Metrics(buckets=(0.1, 1.0))
    m.observe("/v1/search", "POST", 200, 0.05, body=10)
    m.observe("/v1/search", "POST", 503, 2.0)
    m.error('odd"kind')
    m.set_items(7)
    text = m.render({"rsir_work_running": 1})
    assert 'rsir_request_duration_seconds_bucket{route="/v1/search",le="0.1"} 1' in text
    assert 'rsir_request_duration_seconds_bucket{route="/v1/search",le="+Inf"} 2' in text
    assert 'rsir_errors_total{kind="odd\\"kind"} 1' in text
    assert "rsir_items 7" in text and "rsir_work_running 1" in text
    assert 'rsir_request_body_bytes_total{route="/v1/search"} 10' in text


def test_repeat_filter_logs_one_line_a_kind_per_interval_and_counts_the_rest(caplog):
    from rsir_sdk.serve.limits import RepeatFilter

    logger = logging.getLogger("rsir_sdk.serve.test-repeat")
    limiter = RepeatFilter(interval=0.4)
    logger.addFilter(limiter)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            for _ in range(50):
                logger.warning("%s (%d): %s", "ServiceBusyError", 503, "busy")
            logger.warning("%s (%d): %s", "StoreError", 503, "down")     # another kind passes
            for _ in range(5):
                logger.info("%s (%d): %s", "ServiceBusyError", 503, "busy")  # INFO untouched
            time.sleep(0.45)
            logger.warning("%s (%d): %s", "ServiceBusyError", 503, "busy")
            for _ in range(3):
                logger.warning("%s (%d): %s", "ServiceBusyError", 503, "busy")
            limiter.flush()
        text = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert text[0] == "ServiceBusyError (503): busy"
        assert text[1] == "StoreError (503): down"
        assert text[2].startswith("ServiceBusyError (503): busy (49 more like this in the last")
        assert text[3].startswith("3 more lines like 'ServiceBusyError (503): busy' were not logged")
        assert len(text) == 4
        assert sum(r.levelno == logging.INFO for r in caplog.records) == 5
    finally:
        logger.removeFilter(limiter)


def test_a_code_search_answers_at_most_max_hits_and_the_client_splits_to_fit(served, tmp_path):
    """4,000 codes at k=1000 (the defaults allowed 10,000 x 1,000) made one 232 MB answer and
    took the service from 0.7 to 4 GB: codes x k is capped (422 above), and RemoteRetriever
    splits its requests to fit, with the same hits."""
    import numpy as np

    server = ServerProcess([served.bundle, "--uri", copy_db(served.db, tmp_path), "--collection",
                            COLLECTION, "--max-hits", 25], tmp_path / "serve.log")
    try:
        codes = np.asarray(served.expected["codes"])
        six = np.concatenate([codes] * (6 // len(codes) + 1))[:6]
        expected = [served.expected["by_codes"][i % len(codes)] for i in range(6)]
        r = httpx.post(server.url + "/v1/search/codes", params={"k": 5}, content=six[:5].tobytes(),
                       headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200 and len(r.json()["results"]) == 5        # 25 hits: allowed
        r = httpx.post(server.url + "/v1/search/codes", params={"k": 5}, content=six.tobytes(),
                       headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 422, r.text
        assert "6 codes x k=5 would answer 30 hits; at most 25" in r.json()["message"]
        with RemoteRetriever(server.url) as remote:
            assert remote.info()["limits"]["max_hits"] == 25
            got = remote.search_codes(six, k=10)                            # 3 requests of 2
        assert got == expected
    finally:
        assert server.stop() == 0, server.log[-3000:]


def test_a_token_a_header_cannot_carry_is_refused_at_once_on_both_sides(served, capsys):
    """A token read from a file with its newline: the client failed as "cannot reach ... after
    4 attempts", and a service started with one answered 401 to every client. Both refuse it
    at once, in one line that does not show the token."""
    for token in ("s3cret-token\n", "s3cret token", "s3cret-tökén"):
        with pytest.raises(core.InvalidInputError, match="the token holds") as exc:
            RemoteRetriever("http://127.0.0.1:9", token=token)
        assert "s3cret" not in str(exc.value) and "\n" not in str(exc.value)
        with pytest.raises(ValueError, match="the write token"):
            ServeConfig(write_token=token)
    assert cli.main([str(served.bundle), "--read-token", "s3cret-token\n", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "the read token (--read-token, $RSIR_READ_TOKEN) holds a space or line break" in err
    assert "s3cret" not in err and err.count("\n") == 1
    RemoteRetriever("http://127.0.0.1:9", token="ok-Token_1.+/=").close()  # RFC 6750 characters


def test_the_service_says_when_its_archive_root_cannot_serve_the_hits_images(served, tmp_path):
    """Without --archive-root the root is the bundle's training archive; a collection indexed
    from elsewhere then showed "no image" on every card of the page, without a word."""
    import os

    from rsir_sdk import Retriever

    with Retriever(served.bundle, uri=str(copy_db(served.db, tmp_path)),
                   collection=COLLECTION) as r:
        where = cli.images_outside_root(r, tmp_path, sample=10)
        assert where is not None and where.startswith("10 of 10 sampled items' images cannot be "
                                                      f"served from the archive root {tmp_path}")
        assert "--archive-root" in where
        common = Path(os.path.commonpath([str(p) for p in served.paths]))
        assert cli.images_outside_root(r, common.resolve(), sample=10) is None
        assert "no archive root" in cli.images_outside_root(r, None, sample=3)


def test_archive_indexing_is_held_to_the_services_pixel_limit(served, tmp_path):
    """`--max-pixels` is the one image-size limit of a service: uploads were held to it, but
    `POST /v1/index` decoded archive images up to the library's 100 MP."""
    import shutil

    root = tmp_path / "root"
    for path in served.paths[:3]:                      # 64 x 64 = 4,096 pixels each
        (root / "Forest").mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, root / "Forest" / path.name)
    server = ServerProcess([served.bundle, "--uri", tmp_path / "new.db", "--collection", "small",
                            "--archive-root", root, "--allow-index", "--max-pixels", 4000, "--create"],
                           tmp_path / "serve.log")
    try:
        with RemoteRetriever(server.url) as r:
            with pytest.raises(core.InvalidInputError, match="at most 4000 on this service"):
                r.index("Forest", label_from="parent", max_pixels=5000)
            summary = r.index("Forest", label_from="parent")
            assert summary.indexed == 0 and len(summary.failed) == 3
            assert summary.failed[0].reason == "64x64 pixels is over the 4000-pixel limit"
    finally:
        assert server.stop() == 0, server.log[-3000:]
