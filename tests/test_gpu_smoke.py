"""``bench/gpu.sh --smoke``: the GPU proof's stages, run on the CPU with tiny budgets, so that the one command a lent
GPU gets cannot rot between the rare sessions that have one (a broken import or argument there costs device
minutes nobody can give back).

One run of the real script (a subprocess, as the device runs it); each test then checks one stage's JSON: it exists,
every number in it is finite, and the figures that stage exists for are there.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
STAGES = ("env", "cuda_tests", "throughput", "train", "eval")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, fmnist_root):
    out = tmp_path_factory.mktemp("gpu-smoke")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "bench/gpu.sh", "--smoke", str(fmnist_root)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=360)
    return out, proc


def _json(out, name: str) -> dict:
    path = out / f"gpu_{name}.json"
    assert path.is_file(), f"{path.name} missing"
    return json.loads(path.read_text())


def _numbers(obj, where: str = ""):
    """Every number in a JSON tree, with its path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{where}[{i}]")
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield where, obj


def test_the_smoke_run_passes_every_stage(smoke):
    out, proc = smoke
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    stages = _json(out, "stages")
    assert [s["name"] for s in stages["stages"]] == list(STAGES)
    assert stages["failed"] == [] and stages["smoke"] is True
    assert (out / "gpu.log").stat().st_size > 0


@pytest.mark.parametrize("name", ["stages", "env", "cuda_tests", "throughput", "train", "eval"])
def test_each_stage_json_holds_finite_numbers_and_the_machine(smoke, name):
    record = _json(smoke[0], name)
    bad = [(where, v) for where, v in _numbers(record) if not math.isfinite(v)]
    assert not bad, bad
    assert record["machine"]["cpu"]["model"] and "gpu" in record["machine"]


def test_the_figures_each_stage_exists_for(smoke):
    out = smoke[0]
    assert _json(out, "env")["versions"]["torch"]
    tests = _json(out, "cuda_tests")
    assert tests["exit_code"] == 0 and tests["failed"] == 0 and tests["passed"] + tests["skipped"] >= 5
    row = _json(out, "throughput")["results"][0]
    assert row["step_ours_img_s"] > 0 and row["step_ref_img_s"] > 0 and row["step_ratio"] > 0
    train = _json(out, "train")
    assert train["steps"] > 0 and train["precision"]["precision"] in ("fp32", "bf16")
    assert 0 < train["monitor_knn"] <= 1 and isinstance(train["knn_curve"], dict)  # the curve: steps vary with load
    protocol = _json(out, "eval")["standard_protocol"]
    for which in ("trained", "raw_pixels"):
        scores = protocol[which]
        assert 0 < scores["knn"] <= 1 and 0 < scores["knn_200"] <= 1 and 0 < scores["probe"] <= 1
        assert scores["probe_iterations"] > 0
