import numpy as np
import pytest
import torch

from tests.conftest import sample_images, tiny_encoder
from training.eval import embed_images, knn_accuracy, linear_probe_accuracy, random_init_like


def _clusters(n_per=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(4, 16, dtype=np.float32) * 5
    emb = np.concatenate([c + rng.normal(0, 0.3, (n_per, 16)).astype(np.float32) for c in centres])
    return emb, np.repeat(np.arange(4), n_per)


def test_knn_is_perfect_on_separated_clusters():
    tr, ytr = _clusters(seed=0)
    te, yte = _clusters(seed=1)
    assert knn_accuracy(tr, ytr, te, yte, k=5) == 1.0


def test_knn_is_near_chance_on_shuffled_labels():
    tr, ytr = _clusters(n_per=50, seed=0)
    te, yte = _clusters(n_per=50, seed=1)
    acc = knn_accuracy(tr, np.random.default_rng(0).permutation(ytr), te, yte, k=5)
    assert acc < 0.5


def test_knn_weights_votes_by_similarity():
    tr = np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]], np.float32)
    ytr = np.array([0, 1, 1])
    # k=3: one very close neighbour of class 0 outweighs two far ones of class 1 at T=0.07
    assert knn_accuracy(tr, ytr, np.array([[1.0, 0.05]], np.float32), np.array([0]), k=3) == 1.0


def test_linear_probe_separates_clusters():
    tr, ytr = _clusters(seed=0)
    te, yte = _clusters(seed=1)
    assert linear_probe_accuracy(tr, ytr, te, yte) == 1.0


def test_embed_images_returns_unit_vectors():
    enc = tiny_encoder()
    emb = embed_images(enc, sample_images(8), batch_size=3)
    assert emb.shape == (8, enc.out_dim) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_embed_images_rejects_wrong_size():
    with pytest.raises(ValueError, match="expects 28"):
        embed_images(tiny_encoder(), np.zeros((2, 32, 32, 3), np.uint8))


def test_random_init_keeps_the_callers_rng():
    enc = tiny_encoder()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    random_init_like(enc)
    assert torch.equal(torch.get_rng_state(), state)


def test_eval_cli_prints_a_table_and_writes_json(tmp_path, capsys, fmnist_root):
    import json

    from clients.cli import main
    from training.artifact import save_encoder

    path = save_encoder(tmp_path / "encoder.pt", tiny_encoder())
    code = main(["eval", "--encoder", str(path), "--data-root", str(fmnist_root), "--max-train", "300",
                 "--max-test", "100", "--json", str(tmp_path / "res.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "raw_pixels" in out and "kNN@20" in out and "linear probe" in out
    res = json.loads((tmp_path / "res.json").read_text())
    assert set(res) >= {"trained", "random_init", "raw_pixels"} and 0.0 <= res["trained"]["knn"] <= 1.0
