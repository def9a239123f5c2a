"""StepLogger: the NaN and collapse aborts, the four TensorBoard scalars, and which steps it looks at."""

import pytest
import torch

from training.errors import RunFailed, TrainingError
from training.steplog import StepLogger, embedding_std


class FakeWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, name: str, value: float, step: int) -> None:
        self.scalars.append((name, value, step))


class FakeBar:
    def __init__(self, total: int) -> None:
        self.n, self.total, self.postfix = 0, total, None

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix(self, **kw) -> None:
        self.postfix = kw


def _spread(n: int = 8, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def test_writes_the_four_scalars_on_logged_steps_and_the_last():
    writer, bar = FakeWriter(), FakeBar(7)
    logger = StepLogger(log_every=3, collapse_std=1e-4, writer=writer, bar=bar)
    for step in range(1, 8):
        logger.log(step, 7, torch.tensor(float(step)), _spread(), lr=0.1, tau=0.99)
    assert bar.n == 7
    assert sorted({s for _, _, s in writer.scalars}) == [3, 6, 7]
    at7 = {name: v for name, v, s in writer.scalars if s == 7}
    assert at7 == {"train/loss": 7.0, "train/lr": 0.1, "train/tau": 0.99, "train/embedding_std": logger.last_std}
    assert logger.last_loss == 7.0 and bar.postfix == {"loss": "7.000", "lr": "0.1", "tau": "0.9900"}


def test_nan_loss_raises_with_the_step_and_what_to_change():
    logger = StepLogger(log_every=1, collapse_std=1e-4, context={"lr_base": 2.0, "precision": "bf16"})
    with pytest.raises(RunFailed, match=r"training diverged at step 3: loss is nan \(lr 0\.5\); lower "
                                        r"optim\.lr_base \(now 2\), or train in fp32 .*now bf16") as exc:
        logger.log(3, 10, torch.tensor(float("nan")), _spread(), lr=0.5, tau=0.99)
    assert (exc.value.kind, exc.value.step) == ("diverged", 3) and isinstance(exc.value, TrainingError)


def test_collapse_raises_when_every_image_maps_to_one_point():
    logger = StepLogger(log_every=1, collapse_std=1e-4)
    same = torch.ones(8, 4)
    assert embedding_std(same) == 0.0
    with pytest.raises(RunFailed, match="representation collapsed at step 2: embedding std 0.00e") as exc:
        logger.log(2, 10, torch.tensor(1.0), same, lr=0.5, tau=0.99)
    assert exc.value.kind == "collapsed"


def test_on_a_gpu_unlogged_steps_are_not_read_back_but_the_last_step_is_checked():
    """The checks ride on the logged read-back (a device sync) — until :meth:`finish` looks at the last step."""
    writer = FakeWriter()
    logger = StepLogger(log_every=5, collapse_std=1e-4, writer=writer)
    logger.log(4, 10, torch.tensor(float("nan")), _spread(), lr=0.5, tau=0.99)
    assert writer.scalars == [] and logger.last_loss != logger.last_loss  # still the initial NaN
    with pytest.raises(RunFailed, match="diverged at step 4"):
        logger.finish()  # a time budget that stopped the run at step 4 must not end with an unchecked NaN


def test_on_the_cpu_every_step_is_checked():
    """No device to wait for: a run of a few slow steps, stopped between two logged ones, is checked all along."""
    logger = StepLogger(log_every=10, collapse_std=1e-4, every_step=True)
    logger.log(1, 100, torch.tensor(1.5), _spread(), lr=0.5, tau=0.99)
    with pytest.raises(RunFailed, match="diverged at step 2: loss is inf"):
        logger.log(2, 100, torch.tensor(float("inf")), _spread(), lr=0.5, tau=0.99)


def test_finish_leaves_a_healthy_last_step_alone_and_records_it():
    logger = StepLogger(log_every=10, collapse_std=1e-4)
    logger.log(3, 100, torch.tensor(1.25), _spread(), lr=0.5, tau=0.99)
    logger.finish()
    assert logger.last_loss == 1.25 and logger.last_std > 0.1


def test_set_total_moves_the_bars_end():
    bar = FakeBar(1000)
    StepLogger(10, 1e-4, bar=bar).set_total(49)
    assert bar.total == 49
