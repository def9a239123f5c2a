"""Packaging: one project namespace (``byol_embed``) over the card's top-level packages, and a wheel that holds what
serving needs — built from the checkout, installed, and imported from the install (not the checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("byol_embed", "training", "serving", "index", "clients")


def _python(code: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_namespace_is_lazy_and_light():
    code = ("import sys, byol_embed; from byol_embed import EmbeddingClient, OnnxEncoder, VectorIndex; "
            "import clients.client, serving.contract.encoder, index.vector_index; "
            "assert EmbeddingClient is clients.client.EmbeddingClient; "
            "assert VectorIndex is index.vector_index.VectorIndex; "
            "print(sorted(m for m in ('torch', 'training', 'bentoml') if m in sys.modules))")
    r = _python(code, REPO)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:]


def test_every_public_name_resolves():
    import byol_embed

    for name in byol_embed.__all__:
        assert getattr(byol_embed, name) is not None, name
    from training.train import train

    assert byol_embed.train is train and byol_embed.index.__name__ == "index"


def test_an_impostor_top_level_package_is_named_not_silently_used(tmp_path):
    (tmp_path / "index.py").write_text("VectorIndex = 'someone else'\n")  # another project's `index` first on sys.path
    code = "import byol_embed\ntry:\n    byol_embed.VectorIndex\nexcept ImportError as e:\n    print(e)\n"
    r = _python(code, tmp_path, f"{tmp_path}{os.pathsep}{REPO}")
    assert r.returncode == 0 and "top-level package 'index' is not byol-embed's" in r.stdout, r.stdout + r.stderr
    assert str(tmp_path / "index.py") in r.stdout


def _source_copy(dest: Path) -> Path:
    """The files a build reads, copied, so that building writes no build/ or egg-info into the checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = _source_copy(tmp_path_factory.mktemp("wheel") / "src")
    out = src.parent / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("byol_embed-*.whl")
    return whl


def test_the_wheel_holds_every_package_and_the_serving_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"byol_embed/__init__.py", "serving/service.py", "serving/contract/image.py", "index/vector_index.py",
                "clients/cli.py", "clients/client.py", "training/config.py"}
    expected |= {str(p.relative_to(REPO)) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
                 if "__pycache__" not in p.parts}
    ui = REPO / "serving" / "ui"  # the /ui page's static files, when the checkout has them
    expected |= {str(p.relative_to(REPO)) for p in ui.rglob("*") if p.is_file()} if ui.is_dir() else set()
    assert not expected - names, sorted(expected - names)
    assert not {n for n in names if n.startswith(("tests/", "bench/"))}
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "byol = clients.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_installed_wheel_imports_from_its_install_not_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    code = ("import byol_embed, index, serving; byol_embed.check_packages(); from byol_embed import OnnxEncoder; "
            "print(byol_embed.__file__); print(index.__file__); print(OnnxEncoder.__module__)")
    r = _python(code, tmp_path, str(target))
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(line.startswith(str(target)) for line in lines[:2]) and lines[2] == "serving.contract.encoder"
    r = subprocess.run([sys.executable, "-m", "byol_embed", "--version"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(target)})
    assert r.returncode == 0 and r.stdout.startswith("byol "), r.stderr[-2000:]


def _declared() -> set[str]:
    """Distribution names pyproject.toml declares (dependencies and every extra), normalised."""
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *(s for extra in project["optional-dependencies"].values() for s in extra)]
    return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def _imported_top_levels() -> set[str]:
    """Top-level modules the library and command packages import (not tests, not bench)."""
    import ast

    names = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return names


def test_every_package_the_code_imports_is_declared():
    """A package imported directly but only pulled in by another dependency (BentoML brings starlette, anyio,
    pydantic, python-multipart, prometheus-client...) changes or vanishes when that dependency does."""
    import importlib.metadata
    import sys as _sys

    ours = set(PACKAGES) | {"tests", "bench"}
    owners = importlib.metadata.packages_distributions()
    missing = {}
    for name in sorted(_imported_top_levels() - ours - set(_sys.stdlib_module_names) - {"__future__"}):
        dists = {d.lower().replace("_", "-") for d in owners.get(name, [])}
        if dists and not dists & _declared():
            missing[name] = sorted(dists)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
