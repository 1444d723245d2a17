"""The project's code rules, read from the source as it is (no list of known names to drift).

- no public function or method of ``rsir_sdk`` takes more than 10 parameters (``self``/``cls``
  not counted; ``*args`` and ``**kwargs`` one each; explicit constructors count; options travel
  as frozen dataclass values, whose generated constructors are not counted);
- no function in ``rsir_sdk``, ``rsir_train``, ``benchmarks/``, ``export/scripts/`` or ``examples/``
  is longer than 80 lines, and no module of theirs longer than 550 (a module is split past about
  500 lines; 550 is the hard line);
- ``rsir_sdk`` imports neither torch nor onnx, in its source and at run time;
- only ``rsir_sdk/store/`` imports pymilvus (the linter's TID251 rule says the same, checked here
  too so that the rule cannot be switched off silently).

Each test lists every offender (``path:line name``), not only the first.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "rsir_sdk"
TRAINING = ROOT / "export" / "rsir_train"
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = ROOT / "export" / "scripts"
EXAMPLES = ROOT / "examples"
CODE_FOLDERS = [RUNTIME, TRAINING, BENCHMARKS, SCRIPTS, EXAMPLES]
CODE_FOLDER_IDS = ["rsir_sdk", "rsir_train", "benchmarks", "scripts", "examples"]
MAX_PARAMS = 10
MAX_LINES = 80
MAX_MODULE_LINES = 550
FORBIDDEN_IN_RUNTIME = ("torch", "onnx")


def _sources(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _public_functions(tree: ast.Module) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef, bool]]:
    """(function, is_method) for module functions and methods of public classes (nested: no)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield node, False
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                if item.name in ("__init__", "__new__", "__call__") or not item.name.startswith("_"):
                    yield item, True


def _parameter_count(func: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> int:
    a = func.args
    names = [*a.posonlyargs, *a.args]
    decorators = {d.id for d in func.decorator_list if isinstance(d, ast.Name)}
    if is_method and "staticmethod" not in decorators and names and names[0].arg in ("self", "cls", "mcs"):
        names = names[1:]
    return len(names) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)


def _is_private_module(path: Path) -> bool:
    return any(part.startswith("_") and part != "__init__.py" and part != "__main__.py"
               for part in path.relative_to(RUNTIME).parts)


def test_public_functions_of_the_runtime_take_at_most_10_parameters():
    wide = []
    for path in _sources(RUNTIME):
        if _is_private_module(path):
            continue
        for func, is_method in _public_functions(_tree(path)):
            n = _parameter_count(func, is_method)
            if n > MAX_PARAMS:
                wide.append(f"{_rel(path)}:{func.lineno} {func.name} ({n} parameters)")
    assert not wide, (f"{len(wide)} public functions take more than {MAX_PARAMS} parameters "
                      "(pass options as a frozen dataclass value):\n  " + "\n  ".join(wide))


def test_parameter_counting_follows_the_rule():
    """The counter itself: self not counted, *args/**kwargs one each, keyword-only counted."""
    tree = ast.parse("class C:\n    def m(self, a, /, b, *args, c, **kw): pass\n"
                     "    @staticmethod\n    def s(a, b): pass\n    def _hidden(self, a): pass\n"
                     "def f(a, b=1, *, c): pass\ndef _g(a): pass\nclass _P:\n    def m(self, a): pass\n")
    counts = {f.name: _parameter_count(f, m) for f, m in _public_functions(tree)}
    assert counts == {"m": 5, "s": 2, "f": 3}


def _long_functions(folder: Path) -> list[str]:
    long = []
    for path in _sources(folder):
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = (node.end_lineno or node.lineno) - start + 1
                if lines > MAX_LINES:
                    long.append(f"{_rel(path)}:{node.lineno} {node.name} ({lines} lines)")
    return long


@pytest.mark.parametrize("folder", CODE_FOLDERS, ids=CODE_FOLDER_IDS)
def test_no_function_is_longer_than_80_lines(folder):
    assert folder.is_dir(), folder
    long = _long_functions(folder)
    assert not long, (f"{len(long)} functions longer than {MAX_LINES} lines:\n  " + "\n  ".join(long))


@pytest.mark.parametrize("folder", CODE_FOLDERS, ids=CODE_FOLDER_IDS)
def test_no_module_is_longer_than_550_lines(folder):
    sources = _sources(folder)
    assert sources, folder
    long = [f"{_rel(p)} ({n} lines)" for p in sources
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, (f"{len(long)} modules longer than {MAX_MODULE_LINES} lines (split them "
                      "along a seam):\n  " + "\n  ".join(long))


def _imports(tree: ast.Module, lines: list[str]) -> Iterator[tuple[int, str]]:
    """(line, top-level module) of every absolute import, skipping lines marked ``noqa: TID251``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if "noqa: TID251" in lines[node.lineno - 1]:
            continue
        for name in names:
            yield node.lineno, name.split(".")[0]


def test_the_runtime_source_imports_neither_torch_nor_onnx_and_pymilvus_only_in_the_store():
    bad = []
    for path in _sources(RUNTIME):
        text = path.read_text(encoding="utf-8")
        in_store = path.relative_to(RUNTIME).parts[0] == "store"
        for line, module in _imports(ast.parse(text), text.splitlines()):
            if module in FORBIDDEN_IN_RUNTIME or (module == "pymilvus" and not in_store):
                bad.append(f"{_rel(path)}:{line} imports {module}")
    assert not bad, "import rules broken:\n  " + "\n  ".join(bad)


def test_importing_every_runtime_module_loads_neither_torch_nor_onnx():
    """Import every module of rsir_sdk (the service, the CLI, the Ray engine too) in a fresh
    interpreter, then look at sys.modules: nothing pulled torch or onnx in, directly or not."""
    probe = (
        "import importlib, pkgutil, sys\n"
        "import rsir_sdk\n"
        "failed = []\n"
        "for m in pkgutil.walk_packages(rsir_sdk.__path__, 'rsir_sdk.'):\n"
        "    if m.name.endswith('__main__'):\n"
        "        continue\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except ImportError as exc:\n"
        "        failed.append(f'{m.name}: {exc}')\n"
        "print('LOADED', sorted(n for n in ('torch', 'onnx') if n in sys.modules))\n"
        "print('FAILED', failed)\n"
        "print('COUNT', len([n for n in sys.modules if n.startswith('rsir_sdk')]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert out["FAILED"] == "[]", f"runtime modules that do not import: {out['FAILED']}"
    assert int(out["COUNT"]) >= 30  # the walk really imported the package
    assert out["LOADED"] == "[]", f"importing rsir_sdk loaded {out['LOADED']}"


def test_the_linter_enforces_the_import_rules(tmp_path):
    """ruff's TID251 (banned-api) refuses torch/onnx/pymilvus where the rules say, allows the rest."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    cases = {  # path it would have -> modules ruff must refuse there
        "rsir_sdk/x_new.py": {"torch", "onnx", "pymilvus"},
        "rsir_sdk/serve/x_new.py": {"torch", "onnx", "pymilvus"},
        "rsir_sdk/store/x_new.py": {"torch", "onnx"},
        "tests/test_x_new.py": {"pymilvus"},
        "export/rsir_train/x_new.py": {"pymilvus"},
        "benchmarks/x_new.py": {"pymilvus"},
        "tests/milvus_x_new.py": set(),
        "benchmarks/_store_x_new.py": set(),
    }
    source = "import onnx\nimport pymilvus\nimport torch\n\nprint(onnx, pymilvus, torch)\n"
    for path, banned in cases.items():
        proc = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise",
                               "--stdin-filename", path, "-"], input=source, capture_output=True,
                              text=True, cwd=ROOT, timeout=120)
        refused = {m for m in ("torch", "onnx", "pymilvus") if f"`{m}` is banned" in proc.stdout}
        assert refused == banned, (path, proc.stdout, proc.stderr)
