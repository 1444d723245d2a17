"""Shared by the benchmark scripts: machine description, timing, tables, docs/benchmarks.md sections.

Each benchmark prints its table and (unless ``--no-write``) replaces its own section of
``docs/benchmarks.md`` between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` markers,
with the machine, the command and the date, so the figures in the docs are always the output of
one named run.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

HEADER = """# Benchmarks

Figures written by the scripts in `benchmarks/` (each section is replaced by the script that
owns it; the command, machine and date are those of the run that produced it). Re-run a
script to refresh its section (`python benchmarks/<name>.py ...`, the command each section
shows); `--no-write` prints without touching this file.
"""


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> float | None:
    """Total RAM in GB (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return None


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. ``'3.1 2.8 2.0'`` (other work slows benchmarks)."""
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def gpu_note() -> str:
    """Whether a GPU provider is available to onnxruntime here."""
    try:
        import onnxruntime as ort

        gpu = [p for p in ort.get_available_providers()
               if p not in ("CPUExecutionProvider", "AzureExecutionProvider")]
    except ImportError:
        gpu = []
    return f"onnxruntime providers: {', '.join(gpu)} + CPU" if gpu else "no GPU (CPU only)"


def machine(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A small description of where the benchmark ran."""
    mem = memory_gb()
    info = {
        "cpu": f"{cpu_model()}, {os.cpu_count()} logical cores",
        "memory": f"{mem:.0f} GB" if mem else "n/a",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": gpu_note(),
    }
    info.update(extra or {})
    return info


def versions(*names: str) -> str:
    """``name version`` for each importable distribution, comma-separated."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for n in names:
        try:
            out.append(f"{n} {version(n)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def command_line() -> str:
    """How this script was invoked, relative to the repository root when possible."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return "python " + shlex.join([str(script), *sys.argv[1:]])


def timeit(fn: Callable[[], Any], repeat: int = 3, warmup: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs after ``warmup`` runs, and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in cells[1:]:
        lines.append("| " + " | ".join(c.rjust(w) if _numeric(c) else c.ljust(w)
                                       for c, w in zip(r, widths)) + " |")
    return "\n".join(lines)


def _numeric(s: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,.]+[x%]?|n/a|-", s))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if v is None:
        return "-"
    return str(v)


def busy(load: str) -> bool:
    """True when the 1-minute load average exceeds the number of cores."""
    try:
        return float(load.split()[0]) > (os.cpu_count() or 1)
    except (ValueError, IndexError):
        return False


def section(name: str, title: str, body: str, meta: dict[str, str], load: tuple[str, str]) -> str:
    """The markdown of one benchmark section, with its command, machine and date."""
    lines = [f"<!-- bench:{name} -->", f"## {title}", ""]
    lines.append(f"- command: `{command_line()}`")
    lines.append(f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    for k, v in meta.items():
        lines.append(f"- {k}: {v}")
    lines.append(f"- load average (1/5/15 min) at start: {load[0]}; at end: {load[1]} "
                 f"(other jobs on this machine when above ~0.5)")
    if busy(load[0]):
        lines.append(f"- **the machine was busy** (load above its {os.cpu_count()} cores): other "
                     f"jobs took CPU time throughout, so absolute figures are low and noisy, and "
                     f"multi-threaded figures measure contention more than scaling; ratios "
                     f"between rows measured in the same run are the figures to read")
    lines += ["", body.rstrip(), f"<!-- /bench:{name} -->"]
    return "\n".join(lines) + "\n"


def write_section(name: str, text: str, doc: Path = DOC) -> Path:
    """Replace (or append) the section ``name`` of ``docs/benchmarks.md``."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    current = doc.read_text(encoding="utf-8") if doc.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n?",
                         re.S)
    if pattern.search(current):
        new = pattern.sub(lambda _: text, current)
    else:
        new = current.rstrip() + "\n\n" + text
    doc.write_text(new, encoding="utf-8")
    return doc
