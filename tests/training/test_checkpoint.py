import pytest
import torch

from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

STATE = {"online": {"w": torch.ones(2)}, "target": {}, "optimizer": {}, "step": 3, "config": {"a": 1}}


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", STATE)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["online"]["w"], torch.ones(2))


def test_no_temp_files_left_behind(tmp_path):
    save_checkpoint(tmp_path / "c.pt", STATE)
    save_checkpoint(tmp_path / "c.pt", {**STATE, "step": 4})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 4


def test_corrupt_file_raises_one_clear_error(tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_foreign_file_is_rejected(tmp_path):
    torch.save({"step": 1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a byol-embed training checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
