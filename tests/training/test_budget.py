"""TimeBudget: the horizon K from a fake clock (no sleeping, nothing timed), and the over-time safety net."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from training.budget import TimeBudget


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _run(budget: TimeBudget, clock: FakeClock, steps: int, total: int, warmup_s: float = 5.0,
         step_s: float = 1.0) -> tuple[int, bool, int]:
    """Steps 1..steps: the first two take ``warmup_s`` each, the rest ``step_s``; returns (K, calibrated, step)."""
    for step in range(1, steps + 1):
        clock.now += warmup_s if step <= 2 else step_s
        total, done = budget.calibrate(step, total)
        if done:
            return total, done, step
    return total, False, steps


def test_lowers_k_to_the_steps_that_fit_timing_only_after_the_warmup_steps():
    # 60 s budget, 95% usable = 57 s. Timing starts after the two 5-s warm-up steps and stops once the timed steps
    # have used 5 % of the budget (3 s: step 5, before the 10 steps asked for); 13 s are spent: 44 more steps fit.
    # Timing from step 1 instead would count the second 5 s warm-up step: 2.3 s/step and K 24.
    clock = FakeClock()
    budget = TimeBudget(max_minutes=1.0, calibrate_steps=10, start_step=0, clock=clock)
    assert _run(budget, clock, 100, total=1000) == (5 + 44, True, 5)


def test_fast_steps_are_timed_calibrate_steps_long():
    clock = FakeClock()
    budget = TimeBudget(max_minutes=10.0, calibrate_steps=10, start_step=0, clock=clock)
    # 570 s usable; at step 12 (10 timed 1-s steps) 20 s are spent: 550 more steps fit
    assert _run(budget, clock, 100, total=10_000) == (12 + 550, True, 12)


def test_slow_steps_are_timed_at_once_so_the_budget_is_not_spent_calibrating():
    """A 37-s step and a 3-minute budget (a 64-px folder on 2 cores): timing 2 + 10 steps took 7.4 minutes; now
    timing starts after the first step and ends after the next, at 5 % of the budget (9 s) each."""
    clock = FakeClock()
    budget = TimeBudget(max_minutes=3.0, calibrate_steps=10, start_step=0, clock=clock)
    assert _run(budget, clock, 100, total=1000, warmup_s=37.0, step_s=37.0) == (4, True, 2)  # 0.95·180 − 74 = 97 s


def test_the_set_up_before_the_loop_counts_when_the_users_clock_started_earlier():
    clock = FakeClock(100.0)
    budget = TimeBudget(max_minutes=1.0, calibrate_steps=10, start_step=0, clock=clock, started=70.0)
    budget.start_loop()
    assert _run(budget, clock, 100, total=1000) == (5 + 14, True, 5)  # 57 s usable − 30 s set-up − 13 s of steps


def test_counts_earlier_sessions_of_the_run():
    clock = FakeClock()
    budget = TimeBudget(max_minutes=1.0, calibrate_steps=10, start_step=0, elapsed_before=17.0, clock=clock)
    assert _run(budget, clock, 100, total=1000)[0] == 5 + 27  # 57 − 17 earlier − 13 now


def test_never_lowers_k_below_the_next_step():
    clock = FakeClock()
    budget = TimeBudget(max_minutes=1.0, calibrate_steps=10, start_step=0, elapsed_before=100.0, clock=clock)
    assert _run(budget, clock, 100, total=1000) == (6, True, 5)


def test_leaves_k_alone_when_it_fits():
    clock = FakeClock()
    budget = TimeBudget(max_minutes=1.0, calibrate_steps=10, start_step=0, clock=clock)
    assert _run(budget, clock, 100, total=40) == (40, True, 5)


def test_calibration_starts_where_the_session_starts():
    clock = FakeClock()
    budget = TimeBudget(max_minutes=10.0, calibrate_steps=3, start_step=50, clock=clock)
    assert budget.calibrate(52, 1000) == (1000, False)  # warm-up skipped: timing starts here
    clock.now += 3.0
    assert budget.calibrate(54, 1000) == (1000, False)
    clock.now += 1.5
    # 3 steps in 4.5 s; 570 - 4.5 = 565.5 s left → 377 more steps
    assert budget.calibrate(55, 1000) == (55 + 377, True)


def test_over_time_is_ten_percent_past_the_budget():
    clock = FakeClock()
    budget = TimeBudget(max_minutes=1.0, calibrate_steps=10, start_step=0, elapsed_before=30.0, clock=clock)
    clock.now = 35.9
    assert not budget.over_time()
    clock.now = 36.1
    assert budget.over_time()


def test_over_time_never_stops_ddp_or_unbudgeted_runs():
    clock = FakeClock()
    ddp = TimeBudget(max_minutes=1.0, calibrate_steps=10, start_step=0, distributed=True, clock=clock)
    free = TimeBudget(max_minutes=None, calibrate_steps=10, start_step=0, clock=clock)
    clock.now = 1e6
    assert not ddp.over_time() and not free.over_time()


class _RankClock:
    """Picklable for mp.spawn: rank 1's steps take twice as long as rank 0's."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        return self.now


def _rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        clock = _RankClock(1.0 + rank)
        budget = TimeBudget(1.0, 10, 0, distributed=True, device=torch.device("cpu"), clock=clock)
        total, done, step = 1000, False, 0
        while not done:
            step += 1
            clock.now += clock.step_s
            total, done = budget.calibrate(step, total)
        torch.save({"total": total}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_take_rank_0s_horizon(tmp_path):
    """Every rank must run the same number of steps: rank 1 measures twice rank 0's step time, yet both get K
    from rank 0 (12 s spent at step 12, 45 s left at 1 s/step → 57)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    assert [torch.load(tmp_path / f"rank{r}.pt")["total"] for r in (0, 1)] == [57, 57]
