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
