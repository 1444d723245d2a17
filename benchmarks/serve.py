"""`rsir serve` under load: N concurrent clients on loopback next to an in-process Retriever.

    python benchmarks/serve.py                        # 16 clients, 60 s per system
    python benchmarks/serve.py --clients 8 --duration 15 --no-write
    python benchmarks/serve.py --duration 20 --sigterm-after 8 --no-write   # SIGTERM mid-soak

Why: the service must hold up when a team or a fleet of devices uses it at once: no errors,
the item count exact afterwards, and a known price per request against calling the Retriever
in-process. Both systems run the same mix in the same run, on copies of the same Milvus Lite
file: ``--mix`` image searches (the image file uploaded; the service decodes and encodes it),
code searches (8 bytes of packed code: the edge path) and adds (one image, a new id). Each
client is a thread of this process with its own ``RemoteRetriever`` (no retries: any failure
counts); the in-process side shares one ``Retriever`` between the same number of threads.
Clients, service and Milvus Lite share this machine's cores, so the figures are a lower bound
for a service with a machine to itself.

The collection holds the shipped EuroSAT sample (200 scenes) plus ``--background`` random codes.
The bundle is ``--bundle``, else a 64-bit random-projection bundle built here (64x64 input).
``--sigterm-after S`` sends SIGTERM to the service S seconds into its soak and checks the
shutdown instead: requests in flight finish, later ones are refused cleanly, exit status 0,
and the Lite file reopens with exactly the acknowledged adds.
"""

from __future__ import annotations  # noqa: I001 (_common first: it puts the checkout on sys.path)

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from _common import ROOT, load_average, machine, section, table, versions, write_section

from rsir_sdk import Bundle, Retriever  # noqa: E402
from rsir_sdk.serve.client import RemoteRetriever  # noqa: E402
from rsir_sdk.serve.errors import ServiceBusyError, ServiceConnectionError  # noqa: E402

SAMPLE = ROOT / "export" / "rsir_train" / "sample" / "eurosat"
COLLECTION = "bench"
OPS = ("search image", "search codes", "add image")


@dataclass
class Soak:
    """What one system did: per-op latencies, errors, adds acknowledged."""

    name: str
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    errors: list[str] = field(default_factory=list)
    refused: int = 0
    #: requests that started before the SIGTERM and completed after it (--sigterm-after)
    straddled: int = 0
    term_at: float | None = None
    acked: set[str] = field(default_factory=set)
    attempted: set[str] = field(default_factory=set)
    body_bytes: dict[str, list[int]] = field(default_factory=lambda: {op: [] for op in OPS})
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ops(self) -> int:
        return sum(len(v) for v in self.latencies.values())


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` in milliseconds; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    return 1000 * s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def build_collection(bundle: Path, db: Path, background: int) -> tuple[int, list[bytes], np.ndarray]:
    """Fill ``db``: the sample scenes plus random codes. Returns (count, query files, query codes)."""
    paths = sorted(SAMPLE.glob("*/*.jpg"))
    with Retriever(bundle, uri=str(db), collection=COLLECTION) as r:
        r.add_images(paths, ids=[f"{p.parent.name}/{p.name}" for p in paths],
                     labels=[p.parent.name for p in paths])
        rng = np.random.default_rng(1)
        for start in range(0, background, 10000):
            n = min(10000, background - start)
            r.add_codes(rng.integers(0, 256, (n, r.bundle.bits // 8), dtype=np.uint8),
                        [f"bg/{start + i}" for i in range(n)])
        codes = r.encoder.encode(paths)
        return r.count(), [p.read_bytes() for p in paths], codes


def soak(name: str, clients: int, duration: float, mix: tuple[float, float, float],
         make: Callable[[], Any], files: list[bytes], codes: np.ndarray,
         on_start: Callable[[Soak], None] | None = None) -> Soak:
    """``clients`` threads run the mix for ``duration`` s against adapters from ``make()``."""
    result = Soak(name)
    deadline = time.monotonic() + duration
    barrier = threading.Barrier(clients + 1)
    weights = np.cumsum(mix) / sum(mix)

    def client(n: int) -> None:
        rng = np.random.default_rng(100 + n)
        api = make()
        barrier.wait()
        i = 0
        while time.monotonic() < deadline:
            op = OPS[int(np.searchsorted(weights, rng.random(), side="right"))]
            j = int(rng.integers(len(files)))
            item_id = f"soak/{n}/{i}"
            i += 1
            t0 = time.perf_counter()
            try:
                if op == "search image":
                    api.search(files[j], k=10)
                elif op == "search codes":
                    api.search_codes(codes[j:j + 1], k=10)
                else:
                    with result.lock:
                        result.attempted.add(item_id)
                    api.add_images([files[j]], ids=[item_id], labels=["soak"])
                    with result.lock:
                        result.acked.add(item_id)
            except (ServiceConnectionError, ServiceBusyError) as exc:
                with result.lock:
                    if result.term_at is not None:   # refused by a service shutting down: clean
                        result.refused += 1
                        return
                    result.errors.append(f"{op}: {exc.__class__.__name__}: {exc}")
                continue
            except Exception as exc:  # every failure is reported, none is hidden
                with result.lock:
                    result.errors.append(f"{op}: {exc.__class__.__name__}: {exc}")
                continue
            t1 = time.perf_counter()
            dt = t1 - t0
            with result.lock:
                if result.term_at is not None and t0 < result.term_at < t1:
                    result.straddled += 1
                result.latencies[op].append(dt)
                sent = getattr(api, "last_request_bytes", None)
                if sent is not None:
                    result.body_bytes[op].append(sent)
        close = getattr(api, "close", None)
        if close:
            close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    if on_start:
        on_start(result)
    for t in threads:
        t.join(duration + 120)
    result.seconds = time.perf_counter() - t0
    return result


class Server:
    """``python -m rsir_sdk.serve`` in a subprocess on 127.0.0.1 (port from uvicorn's log)."""

    def __init__(self, bundle: Path, db: Path, log: Path, concurrency: int):
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log_path = log
        self._log = open(log, "wb")
        with socket.socket() as sock:  # a free port (the access log is off: no port to read)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rsir_sdk.serve", str(bundle), "--uri", str(db), "--collection",
             COLLECTION, "--port", str(port), "--concurrency", str(concurrency), "--max-queue",
             "256", "--log-level", "warning"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        self.url = self._wait(f"http://127.0.0.1:{port}")

    def _wait(self, url: str) -> str:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsir serve exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError("rsir serve did not become ready in 120 s")

    def stop(self, send: bool = True) -> int:
        if send and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(120)
        self._log.close()
        return code


class InProcess:
    """The Retriever behind the same three calls the HTTP clients make."""

    def __init__(self, retriever: Retriever):
        self.r = retriever

    def search(self, data: bytes, k: int):
        return self.r.search(data, k=k)

    def search_codes(self, codes: np.ndarray, k: int):
        return self.r.search_codes(codes, k=k)

    def add_images(self, images: list[bytes], ids: list[str], labels: list[str]):
        return self.r.add_images(images, ids=ids, labels=labels, paths=[""] * len(images))


def rows_for(s: Soak) -> list[list[Any]]:
    allv = [x for v in s.latencies.values() for x in v]
    out = [[s.name, "all", s.ops, len(s.errors), s.ops / s.seconds if s.seconds else 0.0,
            pct(allv, 0.5), pct(allv, 0.99)]]
    for op in OPS:
        v = s.latencies[op]
        out.append([s.name, op, len(v), "", len(v) / s.seconds if s.seconds else 0.0,
                    pct(v, 0.5), pct(v, 0.99)])
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: clients, duration, mix, collection size, bundle, SIGTERM test."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=60.0, help="seconds per system (default 60)")
    p.add_argument("--mix", default="45,45,10", help="image searches, code searches, adds (weights)")
    p.add_argument("--background", type=int, default=20000, help="random codes in the collection")
    p.add_argument("--bundle", default=None)
    p.add_argument("--concurrency", type=int, default=os.cpu_count() or 2,
                   help="the service's worker threads (default: the cores)")
    p.add_argument("--sigterm-after", type=float, default=None,
                   help="send SIGTERM to the service this many seconds into its soak")
    p.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    return p.parse_args(argv)


@dataclass
class ServiceSoak:
    """The HTTP soak and what the service left behind: exit status, counts, the log."""

    soak: Soak
    http_count: int | None  # count over HTTP after the soak (None with --sigterm-after)
    status: int  # the service's exit status
    reopened: int  # count after reopening its Lite file
    present: set[str]  # attempted adds found in the reopened file
    log_text: str


@dataclass
class ServeRun:
    """Both systems' soaks on copies of the same collection, and that collection's setup."""

    bundle_note: str
    bits: int
    base: int  # items in the collection before the soaks
    local: Soak
    local_count: int  # the in-process collection's count afterwards
    service: ServiceSoak


def prepare_bundle(bundle_arg: str | None, tmp: Path) -> tuple[Path, str]:
    """``--bundle``, else a 64-bit random-projection bundle built in ``tmp``; and a note for the docs."""
    if bundle_arg:
        return Path(bundle_arg), str(bundle_arg)
    sys.path.insert(0, str(ROOT / "tests"))
    from onnx_models import build_random_projection_bundle

    bundle = tmp / "rp64"
    build_random_projection_bundle(bundle, bits=64, size=64, seed=0)
    return bundle, "random-projection bundle built here (64x64 input, 64 bits)"


def sigterm_timer(server: Server, after: float | None) -> Callable[[Soak], None]:
    """The soak's ``on_start``: SIGTERM to the service ``after`` s in (the time noted); none if None."""

    def start_timer(result: Soak) -> None:
        if after is None:
            return

        def fire() -> None:
            with result.lock:
                result.term_at = time.perf_counter()
            server.proc.send_signal(signal.SIGTERM)
        threading.Timer(after, fire).start()

    return start_timer


def soak_service(bundle: Path, base_db: Path, tmp: Path, args: argparse.Namespace,
                 mix: tuple[float, ...], files: list[bytes], codes: np.ndarray) -> ServiceSoak:
    """The HTTP clients against ``rsir serve`` on a copy of ``base_db``; then stop and reopen it."""
    (tmp / "http").mkdir()
    db_http = tmp / "http" / "rsir.db"
    shutil.copy2(base_db, db_http)
    server = Server(bundle, db_http, tmp / "http" / "serve.log", args.concurrency)
    remote = soak("rsir serve (HTTP)", args.clients, args.duration, mix,
                  lambda: RemoteRetriever(server.url, retries=0, timeout=120), files, codes,
                  on_start=sigterm_timer(server, args.sigterm_after))
    http_count = None
    if args.sigterm_after is None:
        with RemoteRetriever(server.url) as c:
            http_count = c.count()
    status = server.stop(send=args.sigterm_after is None)
    with Retriever(bundle, uri=str(db_http), collection=COLLECTION) as r:
        reopened = r.count()
        present = {it.id for it in r.store.get(sorted(remote.attempted))} if remote.attempted else set()
    log_text = (tmp / "http" / "serve.log").read_text(errors="replace")
    return ServiceSoak(remote, http_count, status, reopened, present, log_text)


def run_both(args: argparse.Namespace, mix: tuple[float, ...], tmp: Path) -> ServeRun:
    """Build the collection in ``tmp``, then soak the in-process Retriever and the service."""
    bundle, bundle_note = prepare_bundle(args.bundle, tmp)
    bits = Bundle.load(bundle).bits
    base_db = tmp / "base.db"
    base, files, codes = build_collection(bundle, base_db, args.background)
    print(f"collection: {base} items; {args.clients} clients, {args.duration:g} s each", file=sys.stderr)

    (tmp / "inproc").mkdir()
    db_in = tmp / "inproc" / "rsir.db"
    shutil.copy2(base_db, db_in)
    with Retriever(bundle, uri=str(db_in), collection=COLLECTION) as r:
        local = soak("in-process Retriever", args.clients, args.duration, mix,
                     lambda: InProcess(r), files, codes)
        local_count = r.count()
    service = soak_service(bundle, base_db, tmp, args, mix, files, codes)
    return ServeRun(bundle_note, bits, base, local, local_count, service)


def unclean_errors(remote: Soak) -> list[str]:
    """The service's failures other than clean refusals (connection refused, busy)."""
    return [e for e in remote.errors if "ServiceConnectionError" not in e
            and "ServiceBusyError" not in e]


def checks_for(run: ServeRun, sigterm_after: float | None) -> list[str]:
    """One line per check: errors and exact counts, or the SIGTERM shutdown's outcome."""
    local, svc, base = run.local, run.service, run.base
    remote = svc.soak
    local_exact = run.local_count == base + len(local.acked)
    checks = [
        f"in-process: {len(local.errors)} errors; count {run.local_count} = {base} + {len(local.acked)} "
        f"adds: {'exact' if local_exact else 'NOT EXACT'}",
    ]
    if sigterm_after is None:
        exact = svc.http_count == svc.reopened == base + len(remote.acked)
        checks.append(
            f"rsir serve: {len(remote.errors)} errors; count over HTTP {svc.http_count}, after reopening "
            f"the Lite file {svc.reopened}, expected {base} + {len(remote.acked)} adds: "
            f"{'exact' if exact else 'NOT EXACT'}; exit status {svc.status} after SIGTERM")
    else:
        checks.append(
            f"SIGTERM after {sigterm_after:g} s: exit status {svc.status}; {remote.ops} requests "
            f"completed ({remote.straddled} of them in flight at the signal), {remote.refused} "
            f"refused cleanly after it, {len(unclean_errors(remote))} failed "
            f"otherwise; acknowledged adds {len(remote.acked)}, present after reopening "
            f"{len(svc.present)} (all acknowledged present: {remote.acked <= svc.present}); count "
            f"{svc.reopened} = {base} + {len(svc.present)}: {svc.reopened == base + len(svc.present)}")
    if "Traceback" in svc.log_text:
        checks.append("the service log holds a traceback")
    return checks


def report(run: ServeRun, sigterm_after: float | None) -> str:
    """The latency table, the request-size table, the checks and the first errors."""
    local, remote = run.local, run.service.soak
    head = ["system", "operation", "requests", "errors", "per second", "p50 ms", "p99 ms"]
    body_lines = [table(head, rows_for(local) + rows_for(remote))]
    img_bytes = statistics.mean(remote.body_bytes["search image"] or [float("nan")])
    code_bytes = statistics.mean(remote.body_bytes["search codes"] or [float("nan")])
    body_lines += ["", table(["query sent as", "request body bytes per query"],
                             [["image file upload (sample JPEGs, mean)", img_bytes],
                              [f"packed code ({run.bits} bits)", code_bytes],
                              ["ratio", img_bytes / code_bytes if code_bytes else float("nan")]])]
    body_lines += [""] + [f"- {c}" for c in checks_for(run, sigterm_after)]
    for e in (local.errors + remote.errors)[:10]:
        body_lines.append(f"  - {e}")
    return "\n".join(body_lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mix = tuple(float(x) for x in args.mix.split(","))
    load0 = load_average()
    tmp = Path(tempfile.mkdtemp(prefix="rsir-bench-serve-"))
    try:
        run = run_both(args, mix, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    body = report(run, args.sigterm_after)
    print(body)
    meta = machine({
        "versions": versions("fastapi", "starlette", "uvicorn", "httpx", "onnxruntime", "pymilvus",
                             "milvus-lite"),
        "bundle": run.bundle_note,
        "setup": f"{args.clients} client threads (one process) and the service on the same "
                 f"machine, loopback; {args.duration:g} s per system; mix {args.mix} "
                 f"(image searches, code searches, adds); collection {run.base} items; service "
                 f"--concurrency {args.concurrency}",
    })
    if not args.no_write and args.sigterm_after is None:
        text = section("serve", "Service (rsir serve): HTTP vs in-process Retriever "
                       "(`benchmarks/serve.py`)", body, meta, (load0, load_average()))
        print(f"\nwrote {write_section('serve', text)}", file=sys.stderr)
    remote = run.service.soak
    failed = (run.local.errors or (remote.errors if args.sigterm_after is None else unclean_errors(remote))
              or run.service.status != 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
