"""The retrain gates on a user's own data: with labels (class sub-folders) and without (health figures on a fixed
sample). Each must pass a sound candidate and stop a collapsed one — an encoder whose output is constant."""

from __future__ import annotations

import pytest
import torch

from serving.contract.image import encode_png
from tests.conftest import sample_images, tiny_encoder
from training.networks import Encoder


class ConstantEncoder(Encoder):
    """Collapsed: every image gets the same vector (exports and passes parity: ONNX computes the same constant)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 0.0 + 1.0


def _bundle(encoder, path):
    from training.export import export_bundle

    export_bundle(encoder, path, parity_images=sample_images(4))
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("gates")
    current = tiny_encoder(0)
    sound = tiny_encoder(0)
    with torch.no_grad():
        for p in sound.parameters():
            p.add_(0.01 * torch.randn_like(p))  # a small step away, as a short retrain would take
    collapsed = ConstantEncoder(current.cfg)
    collapsed.load_state_dict(current.state_dict())
    return {name: _bundle(enc.eval(), root / name) for name, enc in
            (("current", current), ("sound", sound), ("collapsed", collapsed.eval()))}


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory, fmnist_test):
    root = tmp_path_factory.mktemp("labelled")
    for i in range(300):
        label = fmnist_test.classes[int(fmnist_test.labels[i])].replace("/", "-")
        (root / label).mkdir(exist_ok=True)
        (root / label / f"{i}.png").write_bytes(encode_png(fmnist_test.images[i]))
    return root


def test_the_labelled_folder_gate_passes_a_sound_candidate_and_stops_a_collapsed_one(bundles, labelled_folder):
    from clients import tables
    from clients.workflows.evaluation import GateConfig, gate

    cfg = GateConfig(data=str(labelled_folder), tolerance=0.02)
    sound = gate(bundles["sound"], bundles["current"], cfg)
    collapsed = gate(bundles["collapsed"], bundles["current"], cfg)
    assert sound["accepted"] and sound["settings"]["n_train"] + sound["settings"]["n_test"] == 300
    assert not collapsed["accepted"] and any(r.startswith("knn") for r in collapsed["reasons"])
    text = tables.gate(collapsed)
    assert text.startswith(f"labelled gate on {labelled_folder}") and "REJECTED" in text and "0.02" in text


def test_the_csv_gate_reads_path_label_rows(bundles, labelled_folder, tmp_path):
    from clients.workflows.evaluation import GateConfig, gate

    rows = [f"{f},{f.parent.name}" for f in sorted(labelled_folder.rglob("*.png"))]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    cfg = GateConfig(data=str(tmp_path / "labels.csv"), labels=str(tmp_path / "labels.csv"), tolerance=0.02)
    cfg.check()
    sound, collapsed = (gate(bundles[n], bundles["current"], cfg) for n in ("sound", "collapsed"))
    assert sound["accepted"] and not collapsed["accepted"] and sound["eval_data"] == str(tmp_path / "labels.csv")


def test_the_label_free_gate_passes_a_sound_candidate_and_stops_a_collapsed_one(bundles, labelled_folder):
    from clients import tables
    from clients.workflows.evaluation import LabelFreeGateConfig, label_free_gate

    files = sorted(labelled_folder.rglob("*.png"))
    cfg = LabelFreeGateConfig(sample=200)
    sound = label_free_gate(bundles["sound"], bundles["current"], files, cfg)
    collapsed = label_free_gate(bundles["collapsed"], bundles["current"], files, cfg)
    assert sound["accepted"], sound["reasons"]
    assert sound["n_images"] == 200 and sound["gate"] == "label-free"
    assert not collapsed["accepted"] and {"embedding_std", "effective_rank", "uniformity"} <= {
        r.split(":")[0] for r in collapsed["reasons"]}
    text = tables.gate(collapsed)
    assert text.startswith("label-free gate on 200 of your images") and "thresholds:" in text and "REJECTED" in text


def test_the_label_free_gate_takes_pixels_skips_broken_files_and_needs_enough_images(bundles, fmnist_test, tmp_path):
    from clients.workflows.evaluation import LabelFreeGateConfig, label_free_gate

    (tmp_path / "broken.png").write_bytes(b"not an image")
    items = [tmp_path / "broken.png", *fmnist_test.images[:60]]
    report = label_free_gate(bundles["sound"], bundles["current"], items, LabelFreeGateConfig(), "test pixels")
    assert report["n_images"] == 60 and report["accepted"] and report["sample_from"] == "test pixels"
    with pytest.raises(ValueError, match="at least 20 readable images, found 10"):
        label_free_gate(bundles["sound"], bundles["current"], list(fmnist_test.images[:10]), LabelFreeGateConfig())


def test_both_gates_reject_a_candidate_whose_training_diverged_whatever_its_figures(bundles, labelled_folder,
                                                                                     tmp_path):
    """A bundle carrying a failed run's metrics (exported by hand, or by an older version) never passes."""
    from clients.workflows.evaluation import GateConfig, LabelFreeGateConfig, gate, label_free_gate

    failed = {"stopped": "diverged", "steps": 40, "error": "training diverged at step 40: loss is nan"}
    from training.export import export_bundle

    sound = tiny_encoder(0)
    with torch.no_grad():
        for p in sound.parameters():
            p.add_(0.01 * torch.randn_like(p))
    bundle = tmp_path / "diverged"
    export_bundle(sound.eval(), bundle, meta={"metrics": failed}, parity_images=sample_images(4))
    files = sorted(labelled_folder.rglob("*.png"))
    for report in (gate(bundle, bundles["current"], GateConfig(data=str(labelled_folder), tolerance=0.02)),
                   label_free_gate(bundle, bundles["current"], files, LabelFreeGateConfig(sample=100))):
        assert not report["accepted"]
        assert report["reasons"][0] == "training failed: training diverged at step 40: loss is nan"
