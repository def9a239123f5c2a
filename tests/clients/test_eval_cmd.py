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
