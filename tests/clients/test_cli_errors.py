"""Bad input ends with one clear line on stderr and a non-zero exit, through the real ``byol`` entry point."""

import torch

from clients.cli import main


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert all(n in err[0] for n in needles), err[0]


def test_train_missing_data_path(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "nope")])
    assert code != 0
    _one_error_line(capsys, "byol train: error:", "not found", "nope")


def test_train_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "empty")])
    assert code != 0
    _one_error_line(capsys, "no image files", "empty")


def test_train_unknown_override_key(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--set", "optim.nope=1"])
    assert code != 0
    _one_error_line(capsys, "optim.nope")


def test_resume_from_corrupt_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"\x00garbage")
    code = main(["train", "--out", str(run), "--resume"])
    assert code != 0
    _one_error_line(capsys, "cannot read checkpoint")


def test_resume_without_checkpoint(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--resume"])
    assert code != 0
    _one_error_line(capsys, "nothing to resume")


def test_eval_corrupt_encoder(tmp_path, capsys):
    bad = tmp_path / "encoder.pt"
    torch.save({"hello": 1}, bad)
    code = main(["eval", "--encoder", str(bad)])
    assert code != 0
    _one_error_line(capsys, "not a byol-embed encoder file")


def _broken_images(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i}.png").write_bytes(b"\x89PNG but not really")
    return folder


def test_train_folder_without_a_readable_image(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--data", str(_broken_images(tmp_path / "broken"))])
    assert code != 0
    _one_error_line(capsys, "byol train: error:", "no readable image")


def test_train_size_zero(tmp_path, capsys):
    import numpy as np

    from serving.contract.image import encode_png

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(encode_png(np.zeros((64, 64, 3), np.uint8)))
    code = main(["train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "imgs"), "--size", "0"])
    assert code != 0
    _one_error_line(capsys, "byol train: error:", "--size")


def _retrain(tmp_path, *gate_args):
    new = tmp_path / "new"
    new.mkdir(exist_ok=True)
    return main(["retrain", "--new-data", str(new), *gate_args])


def test_retrain_eval_data_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _retrain(tmp_path, "--eval-data", str(tmp_path / "empty")) != 0
    _one_error_line(capsys, "byol retrain: error:", "no image files", "empty")


def test_retrain_eval_data_without_a_readable_image(tmp_path, capsys):
    for c in ("cat", "dog"):
        _broken_images(tmp_path / "labelled" / c)
    assert _retrain(tmp_path, "--eval-data", str(tmp_path / "labelled")) != 0
    _one_error_line(capsys, "byol retrain: error:", "none of the 6 image file(s) could be read")


def test_retrain_eval_csv_naming_missing_files(tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("path,label\nmissing/a.png,cat\nmissing/b.png,dog\n")
    assert _retrain(tmp_path, "--eval-data", str(tmp_path / "labels.csv")) != 0
    _one_error_line(capsys, "byol retrain: error:", "2 listed file(s) do not exist", "a.png")


def test_retrain_labelled_options_without_labelled_data(tmp_path, capsys):
    assert _retrain(tmp_path, "--tolerance", "0.05") != 0
    _one_error_line(capsys, "byol retrain: error:", "--tolerance", "--eval-data")
