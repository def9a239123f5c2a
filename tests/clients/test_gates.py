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
    from clients.workflows.evaluation import GateConfig, gate

    cfg = GateConfig(data=str(labelled_folder), tolerance=0.02)
    sound = gate(bundles["sound"], bundles["current"], cfg)
    collapsed = gate(bundles["collapsed"], bundles["current"], cfg)
    assert sound["accepted"] and sound["settings"]["n_train"] + sound["settings"]["n_test"] == 300
    assert not collapsed["accepted"] and any(r.startswith("knn") for r in collapsed["reasons"])


def test_the_label_free_gate_passes_a_sound_candidate_and_stops_a_collapsed_one(bundles, labelled_folder):
    from clients.workflows.evaluation import LabelFreeGateConfig, label_free_gate

    files = sorted(labelled_folder.rglob("*.png"))
    cfg = LabelFreeGateConfig(sample=200)
    sound = label_free_gate(bundles["sound"], bundles["current"], files, cfg)
    collapsed = label_free_gate(bundles["collapsed"], bundles["current"], files, cfg)
    assert sound["accepted"], sound["reasons"]
    assert not collapsed["accepted"] and {"embedding_std", "effective_rank", "uniformity"} <= {
        r.split(":")[0] for r in collapsed["reasons"]}
