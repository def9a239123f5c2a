"""One evaluation path: ``byol eval``, ``byol probe fit`` and the retrain gate report the same numbers for the same
encoder and data, because they read the same splits and score with the same function."""

from __future__ import annotations

import json

import pytest

from clients.cli import main as byol

SIZES = ["--max-train", "400", "--max-test", "150"]


@pytest.fixture(scope="module")
def figures(registered_bundle, fmnist_root, tmp_path_factory):
    from clients.workflows.evaluation import GateConfig, gate
    from serving import paths
    from serving.store import bundle_path

    out = tmp_path_factory.mktemp("eval") / "eval.json"
    root = ["--data-root", str(fmnist_root)]
    assert byol(["eval", "--model", registered_bundle, *root, *SIZES, "--json", str(out)]) == 0
    assert byol(["probe", "fit", "--model", registered_bundle, *root, *SIZES]) == 0
    bundle = bundle_path(registered_bundle)
    verdict = gate(bundle, bundle, GateConfig(data_root=str(fmnist_root), max_train=400, max_test=150))
    version = registered_bundle.split(":")[-1]
    probe = json.loads((paths.probe_dir(version) / "report.json").read_text())
    return {"eval": json.loads(out.read_text()), "probe": probe, "gate": verdict}


def test_eval_probe_fit_and_gate_report_identical_accuracies(figures):
    trained = figures["eval"]["trained"]
    assert figures["probe"]["evaluation"]["trained"] == trained
    assert {m: v for m, v in figures["gate"]["candidate"].items() if m != "version"} == trained
    assert {"knn", "knn_200", "probe", "se"} <= set(trained)
    assert figures["gate"]["current"] == figures["gate"]["candidate"]


def test_eval_and_probe_fit_share_the_raw_pixel_baseline(figures):
    assert figures["probe"]["accuracy"]["raw_pixel_knn"] == figures["eval"]["raw_pixels"]["knn"]


def test_they_scored_the_same_number_of_images(figures):
    s = figures["eval"]["settings"]
    assert (s["n_train"], s["n_test"]) == (figures["probe"]["n_train"], figures["probe"]["n_test"]) == (400, 150)


def test_pytorch_and_onnx_vectors_of_one_encoder_score_alike(tmp_path, fmnist_root):
    """``byol eval --encoder`` (PyTorch) and ``--model`` (the exported bundle, ONNX Runtime) on one encoder: the
    vectors agree to ~1e-7, so at most a near-tie among 150 test images may flip."""
    from clients.workflows.evaluation import EvalConfig, evaluate
    from serving.store import register_bundle
    from tests.conftest import make_bundle, tiny_encoder
    from training.artifact import save_encoder

    save_encoder(tmp_path / "encoder.pt", tiny_encoder(seed=4))
    tag = register_bundle(make_bundle(tmp_path / "bundle", seed=4))
    # cache=False: each side scores the raw pixels itself, rather than the second reading the first's
    common = dict(data_root=str(fmnist_root), max_train=400, max_test=150, probe=False, cache=False)
    torch_side = evaluate(EvalConfig(encoder=str(tmp_path / "encoder.pt"), **common))
    onnx_side = evaluate(EvalConfig(model=tag, **common))
    assert abs(torch_side["trained"]["knn"] - onnx_side["trained"]["knn"]) <= 1 / 150
    assert torch_side["raw_pixels"] == onnx_side["raw_pixels"]
