"""The docs held to the code: module table, extras, errors, version, and the runnable examples.

Everything is read from the docs and the code as they are, so a module, an extra, an error
class or a version that changes on one side and not the other fails here, naming both sides.

Runnable examples: every ```python block of README.md, docs/runtime.md and docs/serve.md runs,
in order, one namespace per document, in a temporary working folder where the paths the docs
use exist (``quickstart-out/bundle``: a small real 32-bit bundle with learned database codes;
``quickstart-out/rsir.db``: a Milvus Lite file holding its collection ``eurosat_quickstart``;
``export/rsir_train/sample/eurosat``: the shipped sample; ``scenes.csv``: a manifest of part of
it). A block that cannot run here (a server at a URL, data that is not shipped) is marked by
an HTML comment ``<!-- not run: REASON -->`` on the line before its fence; the reason is required.
"""

from __future__ import annotations

import ast
import builtins
import csv
import functools
import importlib
import re
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "rsir_sdk"
SAMPLE = ROOT / "export" / "rsir_train" / "sample" / "eurosat"
RUNNABLE_DOCS = ("README.md", "docs/runtime.md", "docs/serve.md")
NOT_RUN = re.compile(r"^\s*<!--\s*not run\s*:?\s*(?P<reason>.*?)\s*-->\s*$")


def _pyproject(path: Path = ROOT / "pyproject.toml") -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _version() -> str:
    return _pyproject()["project"]["version"]


def _section(text: str, heading: str) -> str:
    """The text under a ``## heading`` up to the next heading of the same or a higher level."""
    m = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.M)
    assert m, f"no heading {heading!r}"
    level = len(m.group(1))
    rest = text[m.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def _table(section: str) -> list[list[str]]:
    """The rows (cells) of the first Markdown table of a section, header and rule left out."""
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) >= 3, f"no table in:\n{section[:300]}"
    return [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows[2:]]


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# --------------------------------------------------------------------------- (a) modules


def _runtime_modules() -> set[str]:
    """``name`` for each module of rsir_sdk, ``name/`` for each sub-package (private ones too)."""
    out = set()
    for p in RUNTIME.iterdir():
        if p.is_dir() and (p / "__init__.py").exists():
            out.add(f"{p.name}/")
        elif p.suffix == ".py" and p.stem not in ("__init__", "__main__"):
            out.add(p.stem)
    return out


def test_the_module_table_lists_exactly_the_modules_of_rsir_sdk():
    rows = _table(_section((ROOT / "docs/runtime.md").read_text(encoding="utf-8"), "Modules"))
    documented = [name for row in rows for name in _ticked(row[0])]
    assert len(documented) == len(set(documented)), f"listed twice: {documented}"
    actual = _runtime_modules()
    assert set(documented) == actual, (
        f"docs/runtime.md '## Modules' table vs rsir_sdk/: missing from the table "
        f"{sorted(actual - set(documented))}, no such module {sorted(set(documented) - actual)}")
    # a package row that names its sub-modules (`name` (what it does)) names all of them
    for row in rows:
        for package in (n for n in _ticked(row[0]) if n.endswith("/")):
            # `name` (job) or `a`/`b` (job): a sub-module claim
            claimed = set(re.findall(r"`([a-z_][a-z0-9_]*)`(?=(?:/`[a-z_][a-z0-9_]*`)*\s+\()", row[1]))
            if not claimed:
                continue
            folder = RUNTIME / package.rstrip("/")
            real = {p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "__main__")}
            real |= {p.name for p in folder.iterdir() if (p / "__init__.py").exists()}
            assert claimed == real, (f"docs/runtime.md row {package}: missing {sorted(real - claimed)}, "
                                     f"no such module {sorted(claimed - real)}")


# --------------------------------------------------------------------------- (b) extras


def _listed_extras(text: str, dist: str) -> set[str]:
    m = re.search(rf"Extras of `{re.escape(dist)}`: (.*?)(?:\.\s|\.$)", text, re.S)
    assert m, f"README.md does not list the extras of {dist} ('Extras of `{dist}`: ...')"
    return set(re.findall(r"`([a-z0-9_-]+)`\s+\(", m.group(1)))


@pytest.mark.parametrize("dist, pyproject", [("rsir-sdk", "pyproject.toml"),
                                             ("rsir-train", "export/pyproject.toml")])
def test_the_readme_lists_the_extras_each_distribution_declares(dist, pyproject):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    declared = set(_pyproject(ROOT / pyproject)["project"].get("optional-dependencies", {}))
    listed = _listed_extras(readme, dist)
    assert listed == declared, (f"README.md extras of {dist} {sorted(listed)} vs {pyproject} "
                                f"[project.optional-dependencies] {sorted(declared)}")


# --------------------------------------------------------------------------- (c) errors


def _classes_of(module_name: str) -> set[str]:
    module = importlib.import_module(module_name)
    return {name for name, obj in vars(module).items()
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == module_name}


def test_the_errors_table_is_the_error_classes_and_each_imports_from_rsir_sdk():
    import rsir_sdk

    section = _section((ROOT / "docs/runtime.md").read_text(encoding="utf-8"), "Errors")
    documented = {name for row in _table(section) for name in _ticked(row[0])
                  if re.fullmatch(r"[A-Z]\w+", name)}
    actual = (_classes_of("rsir_sdk.errors") | _classes_of("rsir_sdk.serve.errors")
              | _classes_of("rsir_sdk.ingest_report")) - {"RsirError"}
    assert documented == actual, (f"docs/runtime.md '## Errors' table vs the error classes: "
                                  f"undocumented {sorted(actual - documented)}, "
                                  f"no such class {sorted(documented - actual)}")
    assert "`rsir_sdk.RsirError`" in section  # the base class is named below the table
    for name in sorted(documented | {"RsirError"}):
        assert isinstance(getattr(rsir_sdk, name, None), type), f"rsir_sdk.{name} does not import"
        assert name in rsir_sdk.__all__, f"{name} missing from rsir_sdk.__all__"


def test_the_service_errors_table_names_real_classes():
    from rsir_sdk.serve import errors as serve_errors

    text = (ROOT / "docs/serve.md").read_text(encoding="utf-8")
    rows = _table(_section(text, "Errors"))
    wire = {n for row in rows for n in re.findall(r"`([A-Z]\w+)`", row[0])}
    known = _classes_of("rsir_sdk.errors") | _classes_of("rsir_sdk.serve.errors")
    serve_source = "\n".join(p.read_text(encoding="utf-8") for p in (RUNTIME / "serve").glob("*.py"))
    for name in sorted(wire):  # a class, a builtin, or a name the service writes itself
        assert (name in known or isinstance(getattr(builtins, name, None), type)
                or f'"{name}"' in serve_source), f"docs/serve.md errors table: {name} is no class"
    for row in rows:
        for dotted in re.findall(r"`(rsir_sdk(?:\.\w+)+)`", row[2]):
            module, _, name = dotted.rpartition(".")
            assert isinstance(getattr(importlib.import_module(module), name, None), type), \
                f"docs/serve.md errors table: {dotted} does not import"
    statuses = {**serve_errors.CORE_STATUS, **serve_errors.BUILTIN_STATUS, "MethodNotAllowed": 405}
    for name, status in statuses.items():     # every kind the service answers, with its status
        assert any(f"`{name}`" in row[0] and str(status) in row[1] for row in rows), \
            f"docs/serve.md errors table: no row gives {name} its HTTP {status}"
    undocumented = sorted(n for n in _classes_of(serve_errors.__name__) if f"`{n}`" not in text
                          and f".{n}`" not in text)
    assert not undocumented, f"rsir_sdk.serve.errors classes docs/serve.md never names: {undocumented}"


# --------------------------------------------------------------------------- (d) version


@functools.lru_cache(maxsize=None)
def _heading_anchors(path: Path) -> frozenset[str]:
    """The anchors GitHub gives the headings of ``path`` (lower case, punctuation dropped,
    spaces to hyphens, ``-1``, ``-2`` ... for repeats), code blocks left out; each page is
    read once however many links point into it."""
    seen: dict[str, int] = {}
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, 0) + 1
    return frozenset(s if i == 0 else f"{s}-{i}" for s, n in seen.items() for i in range(n))


def test_every_relative_link_of_the_docs_resolves():
    """A link to another page or to a heading (``ingest.md#rasters-...``) leads somewhere: a
    renamed heading or file fails here with the link that broke."""
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            path = doc.parent / file if file else doc
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _heading_anchors(path):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_versions_agree():
    from packaging.specifiers import SpecifierSet

    import rsir_sdk

    version = _version()
    train = _pyproject(ROOT / "export/pyproject.toml")["project"]
    assert train["version"] == version, "rsir-train and rsir-sdk carry one version"
    pin = next(d for d in train["dependencies"] if re.match(r"rsir-sdk\b", d))
    spec = SpecifierSet(pin[len("rsir-sdk"):].split(";")[0].strip())
    assert str(spec) and version in spec, f"rsir-train's {pin!r} does not admit rsir-sdk {version}"
    major, minor = (int(x) for x in version.split(".")[:2])
    assert f"{major}.{minor + 1}.0" not in spec, f"{pin!r}: pin below the next minor version"
    assert rsir_sdk.__version__ == version, (
        f"installed metadata says {rsir_sdk.__version__}, pyproject.toml {version}: "
        "pip install -e . -e ./export --no-deps")


def test_the_docs_show_the_package_version():
    version = _version()
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r'"version": "([^"]+)"|rsir_sdk-(\d[\w.]*)-py3-none-any\.whl'
                             r'|distributions are (\d+\.\d+\.\d+)', text):
            shown = next(g for g in m.groups() if g)
            found.append((path.name, text.count("\n", 0, m.start()) + 1, shown))
    assert any(name == "serve.md" for name, _, _ in found), "docs/serve.md shows no /v1/info version"
    wrong = [f"{name}:{line} shows {shown}" for name, line, shown in found if shown != version]
    assert not wrong, f"the package is {version}: " + "; ".join(wrong)


def test_the_service_reports_that_version():
    """The /v1/info example's version is the one the service puts there (rsir_sdk.__version__)."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (RUNTIME / "serve").glob("*.py"))
    assert re.search(r'"version":\s*__version__|"version":\s*rsir_sdk\.__version__', source), \
        "the service no longer reports rsir_sdk.__version__ in /v1/info: update docs/serve.md"


# --------------------------------------------------------------------------- (e) runnable blocks


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # of the opening fence
    code: str
    not_run: str | None  # the reason given, "" when the comment gives none

    def name(self) -> str:
        first = next((s for s in self.code.splitlines() if s.strip()), "")
        return f"{self.doc}:{self.line} ({first.strip()[:60]})"


def python_blocks(doc: str) -> list[Block]:
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```python\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, start = len(fence.group(1)), i
        i += 1
        body = []
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:])
            i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        m = NOT_RUN.match(prev)
        blocks.append(Block(doc, start + 1, "\n".join(body) + "\n", m.group("reason") if m else None))
        i += 1
    return blocks


def test_every_block_that_is_not_run_says_why():
    skipped = [b for doc in RUNNABLE_DOCS for b in python_blocks(doc) if b.not_run is not None]
    unexplained = [b.name() for b in skipped if len(b.not_run or "") < 10]
    assert not unexplained, f"'<!-- not run: REASON -->' without a reason: {unexplained}"
    assert any(b.not_run is None for b in python_blocks("docs/runtime.md"))
    for doc in RUNNABLE_DOCS:  # and every block parses, run or not
        for b in python_blocks(doc):
            try:
                ast.parse(b.code)
            except SyntaxError as exc:
                pytest.fail(f"{b.name()} is not Python: {exc}")


@pytest.fixture(scope="module")
def docs_bundle(tmp_path_factory, sample_images):
    """A 32-bit random-projection bundle (the quickstart's code length) whose learned database
    codes are the sample's own codes under its relative ids, as the quickstart's AHCL bundle has."""
    from onnx_models import build_random_projection_bundle

    from rsir_sdk import Encoder

    base = tmp_path_factory.mktemp("docs-bundle")
    plain = base / "plain"
    build_random_projection_bundle(plain, bits=32, size=32, seed=3)
    codes = Encoder(plain).encode([p for p, _ in sample_images])
    ids = [f"{label}/{p.name}" for p, label in sample_images]
    out = base / "bundle"
    build_random_projection_bundle(out, bits=32, size=32, seed=3, database={
        "codes": codes, "ids": ids, "labels": [label for _, label in sample_images],
        "paths": ids, "kind": "learned"})
    return out


@pytest.fixture
def docs_cwd(tmp_path, docs_bundle, monkeypatch, sample_images):
    """A working folder holding the paths the docs name; the test runs in it."""
    work = tmp_path / "work"
    (work / "export" / "rsir_train" / "sample").mkdir(parents=True)
    (work / "export" / "rsir_train" / "sample" / "eurosat").symlink_to(SAMPLE, target_is_directory=True)
    shutil.copytree(docs_bundle, work / "quickstart-out" / "bundle")
    with open(work / "scenes.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "id", "label"])
        for p, label in sample_images[::20]:
            writer.writerow([f"export/rsir_train/sample/eurosat/{label}/{p.name}", f"csv/{p.name}", label])
    from rsir_sdk import Retriever

    # what `rsir quickstart` leaves behind: the learned codes in quickstart-out/rsir.db
    with Retriever(work / "quickstart-out" / "bundle", uri=str(work / "quickstart-out" / "rsir.db"),
                   collection="eurosat_quickstart") as r:
        assert r.add_learned_codes() == len(sample_images)
    monkeypatch.chdir(work)
    return work


def _close_all(namespace: dict) -> None:
    """Close what the blocks left open (Milvus Lite files are one process each)."""
    for value in list(namespace.values()):
        close = getattr(value, "close", None)
        if callable(close) and type(value).__module__.startswith("rsir_sdk"):
            try:
                close()
            except Exception:  # already closed, or closing after a failed block
                pass


@pytest.fixture
def docs_service(docs_cwd):
    """``rsir serve`` (a real uvicorn on a loopback port) on a copy of the quickstart collection,
    for docs/serve.md: ``URL``, ``READ_TOKEN``, ``WRITE_TOKEN`` as its blocks name them."""
    from serve_support import ServerProcess

    read, write = "docs-read-Hk2", "docs-write-Vb7"
    db = docs_cwd / "served" / "rsir.db"
    db.parent.mkdir()
    shutil.copy2(docs_cwd / "quickstart-out" / "rsir.db", db)
    server = ServerProcess(
        [docs_cwd / "quickstart-out" / "bundle", "--uri", db, "--collection", "eurosat_quickstart",
         "--archive-root", SAMPLE, "--allow-index"],
        docs_cwd / "serve.log", env={"RSIR_READ_TOKEN": read, "RSIR_WRITE_TOKEN": write})
    try:
        yield {"URL": server.url, "READ_TOKEN": read, "WRITE_TOKEN": write}
    finally:
        server.stop()


@pytest.mark.parametrize("doc", RUNNABLE_DOCS)
def test_the_docs_python_blocks_run(doc, docs_cwd, capsys, request):
    """Each runnable block of ``doc`` runs, in order, sharing one namespace (as a reader would)."""
    runnable = [b for b in python_blocks(doc) if b.not_run is None]
    if not runnable:
        pytest.skip(f"{doc} has no runnable python block")
    namespace: dict = {"__name__": f"docs:{doc}"}
    if doc == "docs/serve.md":
        namespace.update(request.getfixturevalue("docs_service"))
    try:
        for block in runnable:
            try:
                exec(compile(block.code, f"<{block.doc}:{block.line}>", "exec"), namespace)
            except Exception as exc:
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-4:])
                pytest.fail(f"{block.name()} fails: {type(exc).__name__}: {exc}\n{tb}\n"
                            f"(mark it '<!-- not run: REASON -->' only if it cannot run on the sample)",
                            pytrace=False)
    finally:
        _close_all(namespace)
    out = capsys.readouterr().out
    if doc == "README.md":  # the snippet prints hits: distance, label, id of the query itself first
        first = out.splitlines()[0].split()
        assert first == ["0", "Forest", "Forest/Forest_1001.jpg"], out[:500]


def test_the_readme_snippet_uses_the_quickstart_paths():
    """The README's snippet searches what `rsir quickstart` writes (its --out default and collection)."""
    code = python_blocks("README.md")[0].code
    quickstart = (ROOT / "export/rsir_train/quickstart.py").read_text(encoding="utf-8")
    collection = re.search(r'collection="([^"]+)"', code)
    assert collection and collection.group(1) in quickstart, code
    assert "quickstart-out/bundle" in code and "quickstart-out/rsir.db" in code
    assert "quickstart-out" in (ROOT / "export/rsir_train/cli.py").read_text(encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
