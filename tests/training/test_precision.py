"""train.precision / train.channels_last: the choice rule, what it leaves untouched, and the config it writes.

The decision tests replace one thing, the clock of a step (``_Runner.step``): which precision is faster is a fact
about the machine, and the rule must be checked for machines we are not on (an emulated-bf16 CPU, a fast-bf16 one).
"""

import pytest
import torch

from training import precision as prec
from training.augment import BYOLAugment
from training.byol import Online, make_target
from training.config import TrainConfig, apply_overrides, legacy_train, preset

TINY = ["encoder.width=8", "heads.projector_hidden=32", "heads.out_dim=16", "heads.predictor_hidden=32"]
CPU = torch.device("cpu")
OPTIM = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-6, "trust": 1e-3, "clip_lr": False}


def _nets():
    cfg = apply_overrides(preset("fmnist-demo"), TINY)
    torch.manual_seed(0)
    online = Online(cfg)
    return cfg, online, make_target(online), BYOLAugment(cfg.augment, cfg.encoder.input_size)


def _choose(precision="auto", channels_last="auto", distributed=False):
    cfg, online, target, augment = _nets()
    return prec.choose(online, target, augment, (8, 28, 28, 3), precision, channels_last, OPTIM, CPU,
                       distributed=distributed)


@pytest.fixture
def clock(monkeypatch):
    """Steps take ``seconds[name]`` (warm-up: × ``warmup_factor[name]``); every call is counted by name."""
    state = {"seconds": {}, "warmup_factor": {}, "calls": {}}

    def step(self, images, gen, device):
        name = self.cand.name
        state["calls"][name] = state["calls"].get(name, 0) + 1
        first = state["calls"][name] == 1
        return state["seconds"][name] * (state["warmup_factor"].get(name, 1.0) if first else 1.0)

    monkeypatch.setattr(prec._Runner, "step", step)
    return state


def test_the_candidates_start_with_fp32_and_try_bf16_on_its_better_layout_first():
    names = [c.name for c in prec.candidates("auto", "auto")]
    assert names == ["fp32", "fp32+channels_last", "bf16+channels_last", "bf16"]
    assert [c.name for c in prec.candidates("bf16", "auto")] == ["bf16+channels_last", "bf16"]
    assert [c.name for c in prec.candidates("fp32", False)] == ["fp32"]


def test_fixed_settings_are_not_measured(clock):
    choice = _choose("bf16", True)
    assert (choice.precision, choice.channels_last, choice.measured, clock["calls"]) == ("bf16", True, False, {})
    assert "as configured" in choice.line()


def test_emulated_bf16_is_dropped_after_one_step_and_its_other_layout_never_runs(clock):
    """An AVX2-only CPU: bf16 autocast emulated, 8× slower (the first step more)."""
    clock["seconds"] = {"fp32": 0.10, "fp32+channels_last": 0.09, "bf16+channels_last": 0.8, "bf16": 1.5}
    clock["warmup_factor"] = {"bf16+channels_last": 1.5}
    choice = _choose()
    assert (choice.precision, choice.channels_last) == ("fp32", True)
    assert clock["calls"]["bf16+channels_last"] == 1 and "bf16" not in clock["calls"]
    assert set(choice.dropped) == {"bf16+channels_last", "bf16"}
    assert choice.images_per_s == {"fp32": pytest.approx(80.0), "fp32+channels_last": pytest.approx(8 / 0.09, 0.01)}
    assert "fp32+channels_last" in choice.line() and "fp32 80 img/s" in choice.line()


def test_native_bf16_is_chosen_when_clearly_faster(clock):
    """A CPU with avx512_bf16 / AMX: the demo's step ran 2,181 img/s in bf16 + channels_last vs 1,331 in fp32."""
    clock["seconds"] = {"fp32": 0.096, "fp32+channels_last": 0.100, "bf16+channels_last": 0.059, "bf16": 0.069}
    choice = _choose()
    assert (choice.precision, choice.channels_last, choice.amp) == ("bf16", True, True)


def test_a_bf16_win_within_the_margin_goes_to_fp32(clock):
    clock["seconds"] = {"fp32": 0.100, "fp32+channels_last": 0.104, "bf16+channels_last": 0.100 / 1.05, "bf16": 0.2}
    choice = _choose()
    assert (choice.precision, choice.channels_last) == ("fp32", False)


def test_without_early_stop_every_rank_runs_every_candidate_every_round(clock, monkeypatch):
    """DDP: SyncBatchNorm makes each forward a collective, so no rank may skip a step the others take."""
    clock["seconds"] = {"fp32": 0.1, "fp32+channels_last": 0.1, "bf16+channels_last": 1.0, "bf16": 2.0}
    monkeypatch.setattr(prec, "_broadcast_choice", lambda best, options, device: best)
    choice = _choose(distributed=True)
    rounds = prec.WARMUP_STEPS["cpu"] + prec.TIMED_STEPS["cpu"]
    assert clock["calls"] == {name: rounds for name in clock["seconds"]} and choice.dropped == []


def test_measuring_leaves_the_networks_and_the_random_streams_as_they_were():
    cfg, online, target, augment = _nets()
    before = {k: v.clone() for k, v in online.state_dict().items()}
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    choice = prec.choose(online, target, augment, (8, 28, 28, 3), "auto", "auto", OPTIM, CPU)
    assert torch.equal(torch.rand(4), expected)  # the global RNG is where it was
    assert all(torch.equal(v, before[k]) for k, v in online.state_dict().items())
    assert choice.measured and set(choice.images_per_s) | set(choice.dropped) == \
        {c.name for c in prec.candidates("auto", "auto")}
    assert all(v > 0 for v in choice.images_per_s.values())


@pytest.mark.parametrize("override, message", [("train.precision=fp16", "train.precision"),
                                               ("train.channels_last=sometimes", "train.channels_last")])
def test_unknown_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(TrainConfig(), [override])


def test_auto_can_be_asked_for_again_over_a_fixed_choice():
    fixed = apply_overrides(TrainConfig(), ["train.precision=bf16", "train.channels_last=true"])
    again = apply_overrides(fixed, ["train.precision=auto", "train.channels_last=auto"])
    assert (again.train.precision, again.train.channels_last) == ("auto", "auto")


@pytest.mark.parametrize("old, expected", [
    ({"cpu_fast": True, "amp": True, "channels_last": True, "device": "auto"}, ("bf16", True)),
    ({"cpu_fast": False, "amp": True, "channels_last": True, "device": "cpu"}, ("fp32", False)),
    ({"cpu_fast": False, "amp": True, "channels_last": True, "device": "auto"}, ("auto", "auto")),
])
def test_configs_written_before_precision_existed_still_load(old, expected):
    """Checkpoints and bundles store the config dict: an old one names amp / cpu_fast."""
    d = TrainConfig().to_dict()
    d["train"] = {**{k: v for k, v in d["train"].items() if k not in ("precision", "channels_last")}, **old}
    cfg = TrainConfig.from_dict(d)
    assert (cfg.train.precision, cfg.train.channels_last) == expected
    assert "cpu_fast" not in legacy_train(old) and "amp" not in legacy_train(old)
