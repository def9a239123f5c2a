"""``byol export`` through the real command line: registering or not, the run's eval report, one-line errors."""

from __future__ import annotations

from pathlib import Path

from serving.contract import image as image_contract
from serving.contract.bundle import read_bundle
from tests.conftest import tiny_encoder


def test_cli_export_without_registering_writes_a_bundle(tmp_path, capsys):
    from clients.cli import main
    from training.artifact import save_encoder

    save_encoder(tmp_path / "encoder.pt", tiny_encoder(3))
    rc = main(["export", "--encoder", str(tmp_path / "encoder.pt"), "--no-register", "--out", str(tmp_path / "b"),
               "--parity-n", "4"])
    assert rc == 0 and read_bundle(tmp_path / "b")[1].version in capsys.readouterr().out


def test_cli_export_records_the_runs_eval_report(tmp_path):
    import json

    from clients.cli import main
    from training.artifact import save_encoder

    save_encoder(tmp_path / "encoder.pt", tiny_encoder(3), meta={"metrics": {"steps": 5}})
    report = {"random_init": {"knn": 0.5, "probe": 0.6}, "trained": {"knn": 0.7, "probe": 0.8}}
    (tmp_path / "eval.json").write_text(json.dumps(report))
    assert main(["export", "--encoder", str(tmp_path / "encoder.pt"), "--no-register", "--out",
                 str(tmp_path / "b"), "--parity-n", "2"]) == 0
    assert read_bundle(tmp_path / "b")[1].metrics == {"steps": 5, "eval": report}


def test_cli_corrupt_encoder_file_is_one_line_error(tmp_path, capsys):
    from clients.cli import main

    (tmp_path / "encoder.pt").write_bytes(b"not a torch file")
    rc = main(["export", "--encoder", str(tmp_path / "encoder.pt"), "--no-register", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "encoder.pt" in err[0] and not (tmp_path / "b").exists()


def test_cli_missing_encoder_file_is_one_line_error(tmp_path, capsys):
    from clients.cli import main

    rc = main(["export", "--encoder", str(tmp_path / "nope.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "not found" in err[0]


def test_cli_parity_folder_keeps_only_decodable_files(odd_images):
    from clients.workflows.exporting import parity_inputs

    files = parity_inputs(str(odd_images), None, 100, 28)["parity_files"]
    assert all(image_contract.load(f.read_bytes(), 28).shape == (28, 28, 3) for f in files) and len(files) == len(
        [f for f in odd_images.iterdir() if _decodes(f)])


def _decodes(path: Path) -> bool:
    try:
        image_contract.load(path.read_bytes(), 28)
        return True
    except image_contract.ImageError:
        return False


def test_cli_export_int8_adds_the_quantised_graph_and_prints_its_parity(tmp_path, capsys):
    from clients.cli import main
    from training.artifact import save_encoder
    from training.export import INT8_FILE

    save_encoder(tmp_path / "encoder.pt", tiny_encoder(3))
    rc = main(["export", "--encoder", str(tmp_path / "encoder.pt"), "--no-register", "--out", str(tmp_path / "b"),
               "--parity-n", "8", "--int8"])
    manifest = read_bundle(tmp_path / "b")[1]
    assert rc == 0 and (tmp_path / "b" / INT8_FILE).is_file() and INT8_FILE in manifest.extra_files
    assert "int8: max |ONNX - PyTorch|" in capsys.readouterr().out


def test_cli_export_without_int8_writes_only_the_fp32_graph(tmp_path):
    from clients.cli import main
    from training.artifact import save_encoder

    save_encoder(tmp_path / "encoder.pt", tiny_encoder(3))
    assert main(["export", "--encoder", str(tmp_path / "encoder.pt"), "--no-register", "--out", str(tmp_path / "b"),
                 "--parity-n", "4"]) == 0
    assert read_bundle(tmp_path / "b")[1].extra_files == {} and sorted(p.name for p in (tmp_path / "b").iterdir()) \
        == ["encoder.onnx", "manifest.json"]
