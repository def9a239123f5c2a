"""The BentoML internals serving/ patches or reads are where the pinned version has them, and a server whose hook
cannot be applied refuses to start, naming the hook and the BentoML version (an upgrade fails here, not in
production)."""

from __future__ import annotations

import subprocess
import sys

import bentoml
import pytest

from clients.local_server import REPO

INTERNALS = [  # (module, attribute) of every private BentoML name serving/ relies on
    ("bentoml._internal.server.http.traffic", "TimeoutMiddleware"),  # serving.deadline replaces it
    ("bentoml._internal.server.http.instruments", "RunnerTrafficMetricsMiddleware"),  # serving.metrics wraps it
    ("_bentoml_impl.serde", "ALL_SERDE"),  # serving.multipart wraps its multipart reader
    ("bentoml._internal.configuration.containers", "BentoMLContainer"),  # serving.store reads the model store
]


def test_the_pinned_bentoml_is_the_one_installed():
    pinned = next(line for line in (REPO / "pyproject.toml").read_text().splitlines() if '"bentoml==' in line)
    assert f'"bentoml=={bentoml.__version__}"' in pinned


@pytest.mark.parametrize(("module", "name"), INTERNALS)
def test_each_patched_internal_is_where_the_hooks_expect_it(module, name):
    import importlib

    assert hasattr(importlib.import_module(module), name), f"{module}.{name} moved in BentoML {bentoml.__version__}"


def test_the_model_store_internal_still_has_its_path():
    from bentoml._internal.configuration.containers import BentoMLContainer

    from serving.store import store_home

    assert store_home().is_dir() or not store_home().exists()
    assert hasattr(BentoMLContainer.model_store.get(), "_path")


def test_each_hook_applies():
    from serving import deadline, metrics, multipart

    assert deadline.install() and metrics.install_route_labels() and multipart.install()


def test_a_server_whose_hook_cannot_be_applied_refuses_to_start(tmp_path):
    code = ("import bentoml._internal.server.http.traffic as t; del t.TimeoutMiddleware; "
            "import serving.service")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "BENTOML_DO_NOT_TRACK": "true", "PATH": "/usr/bin:/bin",
                              "HOME": str(tmp_path), "BYOL_HOME": str(tmp_path / "byol")})
    assert out.returncode != 0
    expected = f"serving.deadline.install cannot be applied to BentoML {bentoml.__version__}"
    assert expected in out.stderr, out.stderr[-2000:]
