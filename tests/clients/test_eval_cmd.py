"""``byol eval`` through the real command line: the quality table and its JSON."""

from tests.conftest import tiny_encoder


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


def test_evaluation_without_baselines_scores_the_trained_encoder_alone_and_the_same(tmp_path, fmnist_root):
    """What bench/quality_curve does after its first budget: the baselines do not change with the budget."""
    from clients.workflows.evaluation import EvalConfig, evaluate
    from training.artifact import save_encoder

    path = save_encoder(tmp_path / "encoder.pt", tiny_encoder())
    cfg = dict(encoder=str(path), data_root=str(fmnist_root), max_train=300, max_test=100, probe=False)
    alone, full = evaluate(EvalConfig(baselines=False, **cfg)), evaluate(EvalConfig(**cfg))
    assert set(alone) == {"trained", "settings"} and {"random_init", "raw_pixels"} <= set(full)
    assert alone["trained"]["knn"] == full["trained"]["knn"]
