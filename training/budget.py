"""``train.max_minutes``: fit the schedules to a time budget instead of cutting a run short.

Stopping at the deadline would leave the cosine lr and τ schedules half way (lr still high, τ far from 1). Instead
the horizon K is lowered once, early, to the steps that fit: after a couple of warm-up steps (allocation, caches)
the next ``calibrate_steps`` steps are timed and K becomes the step count the remaining budget allows. An
over-time check (10% past the budget) is only a safety net for a bad estimate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

HEADROOM = 0.95  # 5% of the budget kept for the kNN monitor, checkpoints and a machine that slows down later
CALIBRATE_SHARE = 0.05  # slow steps: calibrate as soon as the untimed + timed steps have used this share of the
# budget (a 37-s step at 64 px once took 12 steps, 7 minutes, to calibrate a 3-minute budget)
OVER_TIME = 1.1  # the safety net stops a single-process run this far past the budget


class TimeBudget:
    """Times the run (this session plus ``elapsed_before`` from earlier ones) and derives the horizon K.

    ``clock`` is injectable (seconds, monotone enough) so the arithmetic can be checked without sleeping. Under DDP
    (``distributed``) rank 0's K is broadcast: every rank must run the same number of steps or the all-reduce hangs.
    """

    def __init__(self, max_minutes: float | None, calibrate_steps: int, start_step: int, elapsed_before: float = 0.0,
                 distributed: bool = False, device: torch.device | None = None,
                 clock: Callable[[], float] = time.time, skip_steps: int = 2, started: float | None = None) -> None:
        self.max_minutes, self.calibrate_steps, self.skip_steps = max_minutes, calibrate_steps, skip_steps
        self.elapsed_before, self.distributed, self.device, self.clock = elapsed_before, distributed, device, clock
        self.run_start = clock() if started is None else started  # the user's clock: set-up counts
        self.loop_start = self.run_start  # :meth:`start_loop`: where the steps themselves begin
        self.calib_t0: float | None = None
        self.calib_from = start_step

    def start_loop(self) -> None:
        """The first step starts now (the set-up before it counts against the budget, not as a slow step)."""
        self.loop_start = self.clock()

    def run_seconds(self) -> float:
        """Seconds since this session started."""
        return self.clock() - self.run_start

    def elapsed(self) -> float:
        """Seconds of training in the whole run, earlier sessions included (what checkpoints store)."""
        return self.elapsed_before + self.clock() - self.run_start

    def calibrate(self, step: int, total: int) -> tuple[int, bool]:
        """Call after each step until calibrated; returns ``(K, calibrated)``. Timing starts after ``skip_steps``
        steps and takes ``calibrate_steps`` more — cut short, in a single process, once they have used 2× and 1×
        :data:`CALIBRATE_SHARE` of the budget (steps that slow need no more to be timed well; under DDP the step
        counts alone decide, so every rank reaches the broadcast at the same step).

        K is lowered to ``step + steps that fit`` (never below ``step + 1``: the step under way must be able to
        finish) and left alone when the budget allows more than K.
        """
        share = float("inf") if self.distributed else CALIBRATE_SHARE * self.max_minutes * 60
        if self.calib_t0 is None:
            # the first steps allocate, autotune, compile; slow ones are timed at once
            if step - self.calib_from >= self.skip_steps or self.clock() - self.loop_start >= 2 * share:
                self.calib_t0, self.calib_from = self._synced_clock(), step
            return total, False
        if step - self.calib_from < self.calibrate_steps and self.clock() - self.calib_t0 < share:
            return total, False
        now = self._synced_clock()
        per_step = (now - self.calib_t0) / (step - self.calib_from)
        budget = HEADROOM * self.max_minutes * 60 - (self.elapsed_before + now - self.run_start)
        fits = self._rank0(step + int(budget / per_step))
        if fits < total:
            log.info("time budget %.1f min: %.3f s/step → schedules over %d steps instead of %d",
                     self.max_minutes, per_step, fits, total)
            total = max(step + 1, fits)
        return total, True

    def over_time(self) -> bool:
        """True once a single-process run is 10% past its budget. Never under DDP: ranks' clocks could disagree
        and one rank leaving the loop alone would hang the others (there K is rank 0's, so they stop together)."""
        if self.max_minutes is None or self.distributed:
            return False
        return self.elapsed() > self.max_minutes * 60 * OVER_TIME

    def _synced_clock(self) -> float:
        """The clock once the GPU has finished what was queued: CUDA runs ahead of the host, so an unsynchronised
        reading times the queueing, not the steps (two synchronisations per run)."""
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.clock()

    def _rank0(self, value: int) -> int:
        if not self.distributed:
            return value
        t = torch.tensor([value], device=self.device)
        torch.distributed.broadcast(t, src=0)
        return int(t.item())
