"""Prometheus text-format metrics for the service, without a client library.

Exposed at ``GET /metrics`` (text format 0.0.4):

- ``rsir_requests_total{route,method,status}``: answered requests, by route template;
- ``rsir_request_duration_seconds{route}``: latency histogram;
- ``rsir_request_body_bytes_total{route}``: request body bytes received (image uploads vs codes);
- ``rsir_errors_total{kind}``: error answers by kind (the JSON ``error`` field);
- ``rsir_items``: items in the collection (refreshed after each write and on each scrape);
- ``rsir_work_running``, ``rsir_work_waiting``, ``rsir_work_rejected_total``,
  ``rsir_work_timeouts_total``: the work gate (see :mod:`rsir_sdk.serve.limits`).

Why hand-written: a few counters and one histogram do not justify a dependency, and the
format is small and stable.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Iterable

#: latency histogram bucket upper bounds (seconds)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Thread-safe counters and a latency histogram, rendered as Prometheus text."""

    def __init__(self, buckets: Iterable[float] = BUCKETS):
        self.buckets = tuple(sorted(buckets))
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.body_bytes: dict[str, int] = defaultdict(int)
        self._hist: dict[str, list[int]] = {}
        self._sum: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)
        self.items: int | None = None
        self.gauges: dict[str, float] = {}

    def observe(self, route: str, method: str, status: int, seconds: float, body: int = 0) -> None:
        """Record one answered request."""
        with self._lock:
            self.requests[(route, method, str(status))] += 1
            counts = self._hist.setdefault(route, [0] * len(self.buckets))
            for i, bound in enumerate(self.buckets):
                if seconds <= bound:
                    counts[i] += 1
            self._sum[route] += seconds
            self._count[route] += 1
            if body:
                self.body_bytes[route] += body

    def error(self, kind: str) -> None:
        """Count one error answer of ``kind``."""
        with self._lock:
            self.errors[kind] += 1

    def set_items(self, n: int | None) -> None:
        """Remember the collection's item count (``None`` when unknown)."""
        self.items = n

    def render(self, extra: dict[str, float] | None = None) -> str:
        """The metrics in Prometheus text format 0.0.4."""
        out: list[str] = []
        with self._lock:
            out += ["# HELP rsir_requests_total Requests answered, by route template, method and status.",
                    "# TYPE rsir_requests_total counter"]
            for (route, method, status), n in sorted(self.requests.items()):
                out.append(f"rsir_requests_total{_labels(route=route, method=method, status=status)} {n}")
            out += ["# HELP rsir_request_duration_seconds Request latency, by route template.",
                    "# TYPE rsir_request_duration_seconds histogram"]
            for route in sorted(self._hist):
                counts = self._hist[route]
                for bound, n in zip(self.buckets, counts):
                    out.append(f"rsir_request_duration_seconds_bucket"
                               f"{_labels(route=route, le=_num(bound))} {n}")
                out.append(f"rsir_request_duration_seconds_bucket{_labels(route=route, le='+Inf')} "
                           f"{self._count[route]}")
                out.append(f"rsir_request_duration_seconds_sum{_labels(route=route)} "
                           f"{self._sum[route]:.6f}")
                out.append(f"rsir_request_duration_seconds_count{_labels(route=route)} "
                           f"{self._count[route]}")
            out += ["# HELP rsir_request_body_bytes_total Request body bytes received, by route.",
                    "# TYPE rsir_request_body_bytes_total counter"]
            for route, n in sorted(self.body_bytes.items()):
                out.append(f"rsir_request_body_bytes_total{_labels(route=route)} {n}")
            out += ["# HELP rsir_errors_total Error answers, by kind.",
                    "# TYPE rsir_errors_total counter"]
            for kind, n in sorted(self.errors.items()):
                out.append(f"rsir_errors_total{_labels(kind=kind)} {n}")
            if self.items is not None:
                out += ["# HELP rsir_items Items in the collection.", "# TYPE rsir_items gauge",
                        f"rsir_items {self.items}"]
        for name, value in sorted((extra or {}).items()):
            kind = "counter" if name.endswith("_total") else "gauge"
            out += [f"# TYPE {name} {kind}", f"{name} {_num(value)}"]
        return "\n".join(out) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _labels(**labels: str) -> str:
    parts = []
    for k, v in labels.items():
        v = str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        parts.append(f'{k}="{v}"')
    return "{" + ",".join(parts) + "}"
