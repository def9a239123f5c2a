"""TrainState: built fresh, saved, restored for --resume, seeded init_from a parent; the checkpoint's keys."""

import logging

import pytest
import torch

from serving.contract.sources import ImageSet
from tests.conftest import sample_images
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import apply_overrides, preset
from training.distributed import DistInfo
from training.state import TrainState, build_state, checkpoint_payload, load_weights, restore, starting_point
from training.train import TrainingError

TINY = ["encoder.width=8", "heads.projector_hidden=32", "heads.out_dim=16", "heads.predictor_hidden=32",
        "train.batch_size=16", "train.steps=None", "train.epochs=5", "train.max_minutes=2.0", "train.device=cpu"]
CPU = torch.device("cpu")


def _cfg(*extra):
    return apply_overrides(preset("fmnist-demo"), TINY + list(extra))


def _state(*extra) -> TrainState:
    return build_state(_cfg(*extra), ImageSet(sample_images(48)), CPU, DistInfo())


def _advance(state: TrainState, steps: int) -> None:
    """What the loop does to a state, minus the networks: take batches, draw augmentations, move on."""
    for _ in range(steps):
        state.batcher.next()
        torch.rand(3, generator=state.generator)
        torch.rand(3)
        state.step += 1
    state.total_steps, state.calibrated, state.history = 9, True, {"2": {"knn": 0.5, "loss": 1.0}}
    with torch.no_grad():
        for p in state.online.parameters():
            p.add_(0.25)
        for p in state.target.parameters():
            p.sub_(0.25)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


def test_fresh_state_is_seeded_and_starts_at_step_0():
    a, b = _state(), _state()
    assert _equal(a.online.state_dict(), b.online.state_dict())
    assert _equal(a.target.state_dict(), a.online.branch.state_dict())  # ξ starts as a copy of θ
    assert (a.step, a.total_steps, a.calibrated) == (0, 5 * 3, False)  # 48 images / 16 per batch = 3 per epoch
    assert _state("train.max_minutes=None").calibrated  # no budget: nothing to calibrate


def test_checkpoint_payload_keys_are_the_file_format():
    state = _state()
    payload = checkpoint_payload(state, elapsed_s=1.5)
    assert list(payload) == ["online", "target", "optimizer", "step", "total_steps", "warmup_steps", "calibrated",
                             "elapsed_s", "data", "rng", "config", "encoder_config", "history", "precision"]
    assert payload["elapsed_s"] == 1.5 and payload["config"] == state.cfg.to_dict()


def test_restore_puts_the_run_back_where_it_was(tmp_path):
    saved = _state()
    _advance(saved, 4)
    save_checkpoint(tmp_path / "c.pt", checkpoint_payload(saved, elapsed_s=12.5))
    expected_batch, expected_aug, expected_torch = saved.batcher.next(), torch.rand(5, generator=saved.generator), \
        torch.rand(5)

    state = _state()
    restore(state, load_checkpoint(tmp_path / "c.pt"))
    assert (state.step, state.total_steps, state.calibrated, state.elapsed_before) == (4, 9, True, 12.5)
    assert state.history == {"2": {"knn": 0.5, "loss": 1.0}}
    assert state.batcher.state_dict() == {"epoch": 1, "position": 1}
    assert torch.equal(state.batcher.next(), expected_batch)
    assert torch.equal(torch.rand(5, generator=state.generator), expected_aug)
    assert torch.equal(torch.rand(5), expected_torch)
    assert _equal(state.online.state_dict(), saved.online.state_dict())
    assert _equal(state.target.state_dict(), saved.target.state_dict())


def test_init_from_takes_the_parents_weights_but_not_its_progress(tmp_path):
    parent = _state()
    sum(p.square().sum() for p in parent.online.parameters()).backward()
    parent.optimizer.step()  # LARS now holds a momentum buffer per parameter: the child must get them
    _advance(parent, 4)
    save_checkpoint(tmp_path / "p.pt", checkpoint_payload(parent, elapsed_s=99.0))

    child = _state()
    load_weights(child, load_checkpoint(tmp_path / "p.pt"))
    assert _equal(child.online.state_dict(), parent.online.state_dict())
    assert _equal(child.target.state_dict(), parent.target.state_dict())
    momentum = [s["momentum_buffer"] for s in child.optimizer.state_dict()["state"].values()]
    expected = [s["momentum_buffer"] for s in parent.optimizer.state_dict()["state"].values()]
    assert len(momentum) == len(expected) > 0 and all(map(torch.equal, momentum, expected))
    assert (child.step, child.total_steps, child.calibrated, child.elapsed_before) == (0, 15, False, 0.0)
    assert child.history == {} and child.batcher.state_dict() == {"epoch": 0, "position": 0}


def test_resume_refuses_a_missing_checkpoint_and_a_fresh_run_an_existing_one(tmp_path):
    with pytest.raises(TrainingError, match="nothing to resume"):
        starting_point(_cfg(), tmp_path / "checkpoint.pt", resume=True, init_from=None)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(TrainingError, match="already exists: pass --resume"):
        starting_point(_cfg(), tmp_path / "checkpoint.pt", resume=False, init_from=None)


def test_resume_continues_with_the_config_the_run_started_with(tmp_path):
    save_checkpoint(tmp_path / "checkpoint.pt", checkpoint_payload(_state("optim.lr_base=0.5"), elapsed_s=0.0))
    cfg, own, parent = starting_point(_cfg("optim.lr_base=9.0"), tmp_path / "checkpoint.pt", True, None)
    assert cfg.optim.lr_base == 0.5 and own["step"] == 0 and parent is None


def test_init_from_adopts_the_parents_encoder_and_heads_with_a_warning(tmp_path, caplog):
    save_checkpoint(tmp_path / "p.pt", checkpoint_payload(_state("heads.out_dim=24"), elapsed_s=0.0))
    with caplog.at_level(logging.WARNING, logger="training.state"):
        cfg, own, parent = starting_point(_cfg(), tmp_path / "run" / "checkpoint.pt", False, tmp_path / "p.pt")
    assert cfg.heads.out_dim == 24 and own is None and parent["step"] == 0
    assert "using the parent's encoder/heads config" in caplog.text


def test_under_a_time_budget_warmup_is_a_fraction_of_the_final_horizon_fixed_at_calibration(tmp_path):
    """A time budget lowers K after a few timed steps (lr 0 meanwhile); the fraction-based warmup is taken of that
    K, once, and never follows K again."""
    from training.train import train

    cfg = _cfg("train.steps=1000", "train.epochs=None", "optim.warmup_fraction=0.5", "train.max_minutes=0.02",
               "train.calibrate_steps=2", "train.knn_every=0", "train.progress=false")
    res = train(cfg, tmp_path, data=ImageSet(sample_images(48)))
    ckpt = torch.load(res.checkpoint_path, weights_only=True)
    assert ckpt["total_steps"] < 1000 and ckpt["warmup_steps"] == round(0.5 * ckpt["total_steps"])
