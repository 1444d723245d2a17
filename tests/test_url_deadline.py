"""A URL's whole download has one deadline (connect, headers, body), and private addresses are
opt-in: real loopback servers that drip their answer one byte at a time, the library call and
``rsir serve`` (other requests keep answering; SIGTERM exits within the documented grace)."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx
import pytest

pytest.register_assert_rewrite("serve_support")
from serve_support import COLLECTION, ServerProcess, copy_db  # noqa: E402

from rsir_sdk import Encoder  # noqa: E402
from rsir_sdk.errors import ImageLoadError  # noqa: E402
from rsir_sdk.images import load_image  # noqa: E402

pytest_plugins = ["serve_support"]

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"


class DripServer:
    """A loopback server that answers every connection one byte every ``interval`` seconds:
    the headers (``where="headers"``) or, after whole headers, the body (``where="body"``).
    Each connection stops after ``max_bytes`` bytes (bounded), and :meth:`close` ends them all."""

    def __init__(self, where: str = "headers", interval: float = 0.5, max_bytes: int = 400):
        self.where, self.interval, self.max_bytes = where, interval, max_bytes
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/drip.jpg"
        self.stop = threading.Event()
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:   # the 0.2 s accept timeout, or the socket closed
                continue
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        payload = HEAD + b"\xff" * self.max_bytes if self.where == "body" else HEAD * 20
        start = len(HEAD) if self.where == "body" else 0
        try:
            conn.settimeout(5)
            conn.recv(65536)
            conn.sendall(payload[:start])
            for i in range(start, min(len(payload), start + self.max_bytes)):
                if self.stop.wait(self.interval):
                    break
                conn.sendall(payload[i:i + 1])
        except OSError:   # the client gave up: what the test wants
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def drip():
    servers: list[DripServer] = []

    def make(**kw) -> DripServer:
        servers.append(DripServer(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_dripping_server_is_cut_off_at_the_total_deadline(drip, where):
    server = drip(where=where)
    t0 = time.monotonic()
    with pytest.raises(ImageLoadError, match=r"no complete answer within 2 s") as err:
        load_image(server.url, url_timeout=2, allow_private_urls=True)
    took = time.monotonic() - t0
    assert 1.9 <= took < 3.0, took
    assert err.value.source == server.url and "\n" not in str(err.value)
    assert server.connections == 1


def test_the_deadline_holds_through_the_encoder(drip, rp_bundle):
    bundle, _ = rp_bundle
    server = drip(where="headers", interval=0.3)
    enc = Encoder(bundle, url_timeout=1.5, allow_private_urls=True)
    t0 = time.monotonic()
    with pytest.raises(ImageLoadError, match=r"within 1.5 s"):
        enc.encode(server.url)
    assert time.monotonic() - t0 < 2.5
    with pytest.raises(ImageLoadError, match="private, loopback or link-local"):
        Encoder(bundle).encode(server.url)   # not opted in: refused before connecting
    assert server.connections == 1
    with pytest.raises(ValueError, match="url_timeout"):
        Encoder(bundle, url_timeout=0)


def test_serve_keeps_answering_while_urls_drip_and_sigterm_exits_in_time(drip, served, tmp_path):
    """Two dripping URL searches hold the two workers for at most --url-timeout; other requests
    (queued behind them) answer, and SIGTERM during two more drips exits 0 within the grace
    the docs give (request timeout + 5 s)."""
    server = drip(where="headers", interval=0.5, max_bytes=10_000)
    db = copy_db(served.db, tmp_path)
    proc = ServerProcess([served.bundle, "--uri", db, "--collection", COLLECTION,
                          "--concurrency", 2, "--url-timeout", 3, "--request-timeout", 10,
                          "--allow-private-urls"], tmp_path / "serve.log")
    query = served.expected["queries"][0].read_bytes()
    answers: dict[str, httpx.Response] = {}

    def post(name: str, **kw) -> None:
        answers[name] = httpx.post(proc.url + "/v1/search", timeout=30, **kw)

    try:
        slow = [threading.Thread(target=post, args=(f"drip{i}",), kwargs={"json": {"url": server.url}})
                for i in range(2)]
        for t in slow:
            t.start()
        deadline = time.monotonic() + 10
        while server.connections < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.connections == 2
        t0 = time.monotonic()
        for i in range(3):   # queued behind the two drips, answered once they are cut off
            post(f"upload{i}", content=query, headers={"Content-Type": "image/jpeg"})
            assert answers[f"upload{i}"].status_code == 200, answers[f"upload{i}"].text
        assert time.monotonic() - t0 < 3 + 4
        for t in slow:
            t.join(15)
        for i in range(2):
            r = answers[f"drip{i}"]
            assert r.status_code == 422 and "no complete answer within 3 s" in r.text, r.text
        # SIGTERM with two drips in flight: the process ends by itself, in time, exit 0
        slow = [threading.Thread(target=post, args=(f"late{i}",), kwargs={"json": {"url": server.url}})
                for i in range(2)]
        for t in slow:
            t.start()
        while server.connections < 4 and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        t_term = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        status = proc.proc.wait(10 + 5 + 5)
        assert status == 0 and time.monotonic() - t_term < 10 + 5, proc.log[-2000:]
        for t in slow:
            t.join(15)
    finally:
        proc.stop(signal.SIGKILL)
    assert "Traceback" not in proc.log


def test_rsir_search_takes_its_url_deadline(drip, rp_bundle, tmp_path, capsys):
    from rsir_sdk.cli import main

    server = drip(where="body", interval=0.3)
    t0 = time.monotonic()
    code = main(["search", str(rp_bundle[0]), server.url, "--uri", str(tmp_path / "x.db"),
                 "--url-timeout", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "within 1 s" in err, err
    assert time.monotonic() - t0 < 2.5
