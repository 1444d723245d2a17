"""Shared by the tests/test_serve_*.py modules (loaded with ``pytest_plugins``): real servers.

- ``serve_bundles``: the int8 random-projection bundle the service runs (quantized from
  ``rp_bundle``; falls back to the fp32 one when quantization is unavailable) and a second,
  distinct bundle (the encoder-mismatch case);
- ``served``: a Milvus Lite file filled in-process with the 200 sample scenes (labels,
  synthetic lon/lat footprints), and the hits an in-process ``Retriever`` gives for a set of
  queries, computed *before* any server opens the file (a Lite file admits one process);
- ``image_host``: a local ``http.server`` thread serving the sample (``/slow/SECONDS/...``
  answers after a delay: it holds a service worker for the queue and timeout tests);
- ``main_server``: ``python -m rsir_sdk.serve`` in a subprocess on 127.0.0.1 (port 0: the
  port is read from uvicorn's log), with read and write tokens and small limits.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
READ, WRITE = "read-token-Zq81x", "write-token-Pm27c"
COLLECTION = "scenes"
#: queries whose in-process hits the HTTP answers must equal (indices into sample_images)
QUERY_INDEX = (0, 27, 61, 118, 199)


def footprint(i: int) -> list[float]:
    """A synthetic 640 m footprint (EuroSAT: 64 px at 10 m) on a grid south of Toulouse."""
    w, s = 1.40 + 0.012 * (i % 20), 43.50 + 0.008 * (i // 20)
    return [round(w, 6), round(s, 6), round(w + 0.0079, 6), round(s + 0.0058, 6)]


@pytest.fixture(scope="session")
def serve_bundles(rp_bundle, sample_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(bundle the service runs: int8 when quantization is available, another encoder's bundle)."""
    from onnx_models import build_random_projection_bundle

    d = tmp_path_factory.mktemp("serve-bundles")
    other = d / "other-rp64"
    build_random_projection_bundle(other, bits=64, size=32, seed=7)
    try:
        try:
            from rsir_sdk.quantize import quantize_bundle
        except ImportError:
            from rsir_train.quantize import quantize_bundle  # after the layout refactor
        int8 = d / "rp64-int8"
        quantize_bundle(rp_bundle[0], sample_dir, int8, count=32, check=32,
                        quantize_hash_layer=True, min_agreement=0.5)
        return int8, other
    except ImportError:
        return rp_bundle[0], other


@dataclass
class Served:
    bundle: Path
    db: Path
    paths: list[Path]
    labels: list[str]
    ids: list[str]
    expected: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="session")
def served(serve_bundles, sample_images, tmp_path_factory) -> Served:
    """The sample in a Lite file, and the in-process Retriever's answers (file closed after)."""
    from rsir_sdk import Retriever

    bundle = serve_bundles[0]
    db = tmp_path_factory.mktemp("serve-db") / "rsir.db"
    paths = [p.resolve() for p, _ in sample_images]
    labels = [label for _, label in sample_images]
    ids = [f"{label}/{p.name}" for p, label in sample_images]
    meta = [{"n": i, "lonlat_bounds": footprint(i), "crs": "EPSG:4326"} for i in range(len(paths))]
    s = Served(bundle, db, paths, labels, ids)
    queries = [paths[i] for i in QUERY_INDEX]
    with Retriever(bundle, uri=str(db), collection=COLLECTION) as r:
        r.add_images(paths, ids=ids, labels=labels, metadata=meta)
        s.expected["search"] = [r.search(q, k=10) for q in queries]
        s.expected["forest"] = [r.search(q, k=30, filter={"label": "Forest"}) for q in queries]
        s.expected["radius"] = [r.search(q, k=50, radius=12) for q in queries]
        s.expected["codes"] = r.encoder.encode(queries)
        s.expected["by_codes"] = r.search_codes(s.expected["codes"], k=10)
        s.expected["batch"] = r.search_batch(queries, k=7)
        s.expected["count"] = r.count()
    s.expected["queries"] = queries
    return s


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/slow/S/rest`` waits S seconds, then serves ``/rest``."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        m = re.match(r"^/slow/([0-9.]+)(/.*)$", self.path)
        if m:
            time.sleep(float(m.group(1)))
            self.path = m.group(2)
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def image_host(sample_dir):
    """Base URL of a local HTTP server holding the sample images (a thread of this process)."""
    handler = lambda *a, **kw: QuietHandler(*a, directory=str(sample_dir), **kw)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class ServerProcess:
    """``python -m rsir_sdk.serve ARGS`` on 127.0.0.1, port chosen by the OS, log in a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None,
                 timeout: float = 60.0):
        self.log_path = log
        full_env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "rsir_sdk.serve", *map(str, args), "--host", "127.0.0.1",
               "--port", "0"]
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
                                     cwd=str(ROOT))
        self.url = self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        url = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsir serve exited with {self.proc.returncode}:\n{self.log}")
            if url is None:
                m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", self.log)
                url = m.group(1) if m else None
            if url is not None:
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        return url
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"rsir serve not ready after {timeout} s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def copy_db(src: Path, dst_dir: Path) -> Path:
    """A private copy of a (closed) Lite file, for a server that will change it."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / src.name
    shutil.copy2(src, dst)
    return dst


def artifact_dirs(tmp_path: Path) -> list[Path]:
    """Where a test saves artifacts: ``tmp_path``, and ``$RSIR_TEST_ARTIFACTS`` when set."""
    out = [tmp_path]
    extra = os.environ.get("RSIR_TEST_ARTIFACTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        out.append(Path(extra))
    return out


@pytest.fixture(scope="session")
def main_server(served, sample_dir, tmp_path_factory):
    """The service most tests talk to: tokens on, archive root = the sample, small limits."""
    d = tmp_path_factory.mktemp("main-server")
    db = copy_db(served.db, d)
    server = ServerProcess(
        [served.bundle, "--uri", db, "--collection", COLLECTION, "--archive-root", sample_dir,
         "--max-upload-bytes", 65536, "--max-k", 100, "--max-batch", 8, "--max-codes", 64,
         "--allow-private-urls"],   # the tests' image host is on loopback
        d / "serve.log", env={"RSIR_READ_TOKEN": READ, "RSIR_WRITE_TOKEN": WRITE})
    yield server
    status = server.stop()
    assert status == 0, server.log[-3000:]
    assert READ not in server.log and WRITE not in server.log


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hits_json(hits) -> list[dict[str, Any]]:
    """In-process hits as the service's JSON (the one serialisation, :func:`hit_to_json`)."""
    from rsir_sdk.hits import hit_to_json

    return [hit_to_json(h) for h in hits]
