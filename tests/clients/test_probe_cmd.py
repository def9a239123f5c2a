"""``byol probe fit`` on a small Fashion-MNIST subset: saves both classifiers, reports beside raw pixels."""

from __future__ import annotations

import json

import pytest

from clients.cli import main as byol
from index.knn import KnnClassifier
from index.probe import LinearProbe
from index.vector_index import VersionMismatchError
from serving import paths
from serving.contract.encoder import OnnxEncoder
from serving.store import bundle_path


@pytest.fixture(scope="module")
def fitted(registered_bundle, fmnist_root):
    code = byol(["probe", "fit", "--model", registered_bundle, "--data-root", str(fmnist_root),
                 "--max-train", "1000", "--max-test", "300"])
    assert code == 0
    return OnnxEncoder(bundle_path(registered_bundle))


def test_report_has_all_three_accuracies_above_chance(fitted):
    report = json.loads((paths.probe_dir(fitted.version) / "report.json").read_text())
    acc = report["accuracy"]
    assert set(acc) == {"linear_probe", "knn", "raw_pixel_knn"} and min(acc.values()) > 0.2  # chance is 0.1


def test_the_table_shows_random_init_accuracies_not_its_other_figures(fitted):
    from clients import tables

    report = json.loads((paths.probe_dir(fitted.version) / "report.json").read_text())
    report["random_init"] = {"knn": 0.5, "probe": 0.6, "dim": 512, "n_test": 10000, "probe_iterations": 203}
    rows = [ln.split()[1] for ln in tables.probe(report).splitlines() if ln.startswith("random_init")]
    assert rows == ["knn", "probe"]


def test_saved_classifiers_load_for_their_encoder(fitted, fmnist_test):
    out = paths.probe_dir(fitted.version)
    x = fitted.embed(fmnist_test.images[:50])
    probe, knn = LinearProbe.load(out, fitted.version), KnnClassifier.load(out, fitted.version)
    assert probe.predict_proba(x).shape == knn.predict_proba(x).shape == (50, 10)


def test_saved_classifiers_refuse_another_encoder(fitted):
    with pytest.raises(VersionMismatchError):
        LinearProbe.load(paths.probe_dir(fitted.version), "some-other-version")


def test_folder_with_labels_csv(registered_bundle, fmnist_test, tmp_path, capsys):
    from PIL import Image

    rows = ["path,label"]
    for i in range(60):
        Image.fromarray(fmnist_test.images[i]).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{fmnist_test.classes[int(fmnist_test.labels[i])]}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    code = byol(["probe", "fit", "--model", registered_bundle, "--data", str(tmp_path),
                 "--labels", str(tmp_path / "labels.csv"), "-k", "5"])
    assert code == 0 and "raw_pixel_knn" in capsys.readouterr().out


def test_unlabelled_folder_exits_nonzero_with_one_line(registered_bundle, fmnist_test, tmp_path, capsys):
    from PIL import Image

    for i in range(5):
        Image.fromarray(fmnist_test.images[i]).save(tmp_path / f"{i}.png")
    code = byol(["probe", "fit", "--model", registered_bundle, "--data", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "2 labelled classes" in err[0]


def test_the_demo_probe_step_starts_from_the_evaluations_probe(registered_bundle, fmnist_root):
    """The eval names classes by index, the saved probe by name: the warm start must still take (few iterations)."""
    from clients.workflows.evaluation import EvalConfig, ProbeConfig, evaluate, fit_probe

    subset = dict(data_root=str(fmnist_root), max_train=1000, max_test=300)
    fitted: dict = {}
    evaluate(EvalConfig(model=registered_bundle, **subset), fitted)
    cold = fitted["trained"].probe_model
    warm = fit_probe(ProbeConfig(model=registered_bundle, warm_start=cold, **subset))["evaluation"]["trained"]
    assert warm["probe_converged"] and warm["probe_iterations"] < cold.iterations / 4, (warm, cold.iterations)
    assert abs(warm["probe"] - accuracy_of(cold, registered_bundle, fmnist_root)) < 0.01


def accuracy_of(probe, tag, fmnist_root) -> float:
    from clients.workflows.evaluation import SplitConfig, onnx_embedder

    encoder = OnnxEncoder(bundle_path(tag))
    _, test = SplitConfig(data_root=str(fmnist_root), max_train=1000, max_test=300).splits(encoder.input_size)
    x = onnx_embedder(encoder)(test.images)
    return float((probe.predict_proba(x).argmax(1) == test.labels).mean())
