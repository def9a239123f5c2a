"""The architecture, checked by the project itself (README "Architecture"): one invariant a test.

- the import rules between the packages (import-linter contracts in pyproject.toml);
- library packages (training/, serving/, index/) print nothing, parse no argv, configure no logging, and do nothing
  at import time beyond defining things (the BentoML entry point ``serving/service.py`` configures explicitly);
- no module there over 400 lines, no function over 80.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LIBRARIES = ("training", "serving", "index")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80
ENTRY_POINTS = {"serving/service.py"}  # BentoML imports it as a script: it may configure at import, explicitly


def _modules(packages=LIBRARIES) -> list[Path]:
    return sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py"))


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is a dev dependency (pip install -e '.[dev]')"
    r = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "0 broken" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.mark.parametrize("path", _modules(), ids=_rel)
def test_library_modules_print_nothing_parse_no_argv_configure_no_logging(path):
    tree = ast.parse(path.read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            bad.append(f"print() at line {node.lineno}")
        if isinstance(node, ast.Attribute) and node.attr == "basicConfig":
            bad.append(f"logging.basicConfig at line {node.lineno}")
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if "argparse" in names:
                bad.append(f"argparse imported at line {node.lineno}")
    assert not bad, f"{_rel(path)}: {bad} (commands live in clients/commands/)"


def _names_only(targets: list[ast.expr]) -> bool:
    """``X = ...`` / ``a, b = ...`` bind names; ``os.environ[k] = ...`` or ``obj.attr = ...`` change something."""
    return all(isinstance(t, ast.Name) or (isinstance(t, ast.Tuple) and _names_only(t.elts)) for t in targets)


def _is_definition(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return True
    if isinstance(stmt, ast.Assign | ast.AnnAssign):
        return _names_only(stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target])
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):  # a docstring
        return True
    return isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test)


@pytest.mark.parametrize("path", [p for p in _modules() if _rel(p) not in ENTRY_POINTS], ids=_rel)
def test_library_modules_only_define_things_at_import(path):
    """No call statements, loops or conditionals at module level: importing a module never changes the process
    (environment, thread counts, registries); whoever needs that calls an explicit function."""
    bad = [f"line {s.lineno}: {ast.unparse(s).splitlines()[0][:80]}" for s in ast.parse(path.read_text()).body
           if not _is_definition(s)]
    assert not bad, f"{_rel(path)} does work at import: {bad}"


@pytest.mark.parametrize("path", _modules(), ids=_rel)
def test_library_modules_and_functions_stay_small(path):
    source = path.read_text()
    too_long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{_rel(path)}: split it (one job a module)"
    assert not too_long, f"{_rel(path)}: {too_long}"


def test_the_training_loop_reads_on_one_screen():
    """nanoGPT-shaped: the orchestrating function ≤ 60 lines and the loop (``_loop``: it returns why it stopped, so a
    failed run is caught around it in one place) ≤ 40; the jobs live in their modules."""
    tree = ast.parse((REPO / "training" / "train.py").read_text())
    funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    fn, loop_fn = funcs["_train"], funcs["_loop"]
    loop = next(n for n in ast.walk(loop_fn) if isinstance(n, ast.While))
    assert fn.end_lineno - fn.lineno + 1 <= 60 and loop.end_lineno - loop.lineno + 1 <= 40
    assert any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "_loop" for n in ast.walk(fn))
