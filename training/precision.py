"""``train.precision`` and ``train.channels_last``: chosen by timing the real step on the machine at hand.

Why measure instead of deciding from the device or a preset: the ``fmnist-demo`` step (batch 128, 28 px) on the
same 2 cores, images/s (AVX2 only: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``, as on a Zen 3):

| CPU | fp32 | fp32 channels_last | bf16 | bf16 channels_last |
|---|---|---|---|---|
| avx512_bf16 + AMX | 1,331 | 1,278 | 1,866 | 2,181 |
| AVX2 only | 1,164 | 1,315 | 86 (emulated) | 170 |

A preset that assumed either kind was 2× too slow on the other one or, worse, 13× — and a time-budgeted run that
trains 13× fewer steps ends with worse vectors than raw pixels. So ``auto`` (the default) times a few steps of each
candidate — fp32 or bf16 autocast, contiguous or channels_last — on copies of the run's own networks, optimizer
settings and batch shape, after one warm-up step each, and keeps the fastest. bf16 must win by
:data:`BF16_MARGIN`: it is the same recipe (nothing else changes with it) but rounds more, so a tie goes to fp32.
On CUDA, "fp32" means TF32 tensor cores for matmuls and convolutions (``torch.backends``' ``allow_tf32``).

The run's state is untouched (copies of the networks, a private generator, the global RNG restored), so a run with
``auto`` trains exactly as the same run with the chosen values given explicitly. The choice is written into the
run's config (``config.yaml`` and the checkpoint say what ran, so ``--resume`` reuses it without measuring again)
and its measurements into ``summary.json`` (``metrics.precision``).
"""

from __future__ import annotations

import copy
import gc
import logging
import statistics
import time
from dataclasses import dataclass, field

import torch

from training.augment import BYOLAugment
from training.byol import Branch, Online, train_step
from training.config import PRECISIONS
from training.optim import build_lars

log = logging.getLogger(__name__)

BF16_MARGIN = 1.10  # bf16 must be this much faster than the best fp32 candidate to be chosen
SLOWER_CUTOFF = 1.5  # a candidate whose median step is this × the best one's is dropped
WARMUP_CUTOFF = 4.0  # ... or whose warm-up step took this × the fastest warm-up (emulated bf16: ~8-13×)
TIMED_STEPS = {"cpu": 4, "cuda": 6}
WARMUP_STEPS = {"cpu": 1, "cuda": 3}  # cuDNN autotuning (benchmark=True) happens in the first steps


@dataclass(frozen=True)
class Candidate:
    precision: str  # fp32 | bf16
    channels_last: bool

    @property
    def name(self) -> str:
        return f"{self.precision}{'+channels_last' if self.channels_last else ''}"


@dataclass
class Choice:
    """What the run trains with, and (when ``auto`` measured it) every candidate's images/s."""

    precision: str
    channels_last: bool
    asked: dict = field(default_factory=dict)  # the config's values before the choice ("auto" where measured)
    images_per_s: dict[str, float] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # candidates stopped early (> SLOWER_CUTOFF × the best)
    seconds: float = 0.0

    @property
    def measured(self) -> bool:
        return bool(self.images_per_s)

    @property
    def amp(self) -> bool:
        return self.precision == "bf16"

    def line(self) -> str:
        """One line for the log: what was chosen and the speeds it was chosen by."""
        chosen = Candidate(self.precision, self.channels_last).name
        if not self.measured:
            return f"precision {chosen} (as configured)"
        speeds = ", ".join(f"{name} {ips:,.0f} img/s" for name, ips in self.images_per_s.items())
        dropped = f"; stopped early: {', '.join(self.dropped)}" if self.dropped else ""
        return f"precision auto → {chosen}: {speeds}{dropped} (measured in {self.seconds:.1f} s)"

    def as_dict(self) -> dict:
        return {"precision": self.precision, "channels_last": self.channels_last, "asked": self.asked,
                "images_per_s": self.images_per_s, "dropped": self.dropped, "seconds": round(self.seconds, 2)}


def candidates(precision: str, channels_last: object) -> list[Candidate]:
    """What ``auto`` compares, the baseline (fp32, contiguous) first; bf16 + channels_last before bf16 alone, so a
    slow bf16 is found out on its better layout and the other is skipped (see :func:`choose`)."""
    precs = PRECISIONS if precision == "auto" else (precision,)
    layouts = (False, True) if channels_last == "auto" else (bool(channels_last),)
    out = [Candidate(p, cl) for p in precs for cl in layouts]
    return sorted(out, key=lambda c: (c.precision != "fp32", c.precision == "bf16" and not c.channels_last,
                                      c.channels_last if c.precision == "fp32" else False))


def set_tf32(device: torch.device) -> None:
    """fp32 on CUDA runs on TF32 tensor cores (matmuls and convolutions): the 'fp32' the choice compares."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def choose(online: Online, target: Branch, augment: BYOLAugment, batch_shape: tuple[int, ...], precision: str,
           channels_last: object, optim: dict, device: torch.device, distributed: bool = False) -> Choice:
    """The run's precision and memory layout: the configured ones, or (``auto``) the fastest measured.

    ``batch_shape`` is what this rank's batcher yields (uint8); ``optim`` the kwargs of :func:`build_lars`.
    Under DDP every rank measures and rank 0's choice is broadcast (every rank must run the same step).
    """
    asked = {"precision": precision, "channels_last": channels_last}
    options = candidates(precision, channels_last)
    if len(options) == 1:
        return Choice(options[0].precision, options[0].channels_last, asked)
    t0 = time.monotonic()
    torch_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        speeds, dropped = _measure(options, online, target, augment, batch_shape, optim, device,
                                   early_stop=not distributed)
    finally:
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)
    best = max(speeds, key=lambda c: speeds[c] / (BF16_MARGIN if c.precision == "bf16" else 1.0))
    if distributed:
        best = _broadcast_choice(best, options, device)
    choice = Choice(best.precision, best.channels_last, asked, {c.name: round(v, 1) for c, v in speeds.items()},
                    [c.name for c in dropped], time.monotonic() - t0)
    log.info(choice.line())
    return choice


def _measure(options: list[Candidate], online: Online, target: Branch, augment: BYOLAugment,
             batch_shape: tuple[int, ...], optim: dict, device: torch.device, early_stop: bool = True
             ) -> tuple[dict[Candidate, float], list[Candidate]]:
    """images/s of each candidate from the median of its timed steps.

    The candidates take turns, one step each per round (a machine whose load changes during the measurement slows
    them all alike), warm-up rounds first. A candidate is dropped when its warm-up step took more than
    :data:`WARMUP_CUTOFF` × the fastest one's, or its median step more than :data:`SLOWER_CUTOFF` × the best
    median; a bf16 candidate dropped takes the other bf16 layout with it (emulated bf16 is slow in any layout), so
    an emulated bf16 costs about one step. Without ``early_stop`` (DDP: SyncBatchNorm makes each forward a
    collective, so every rank must run the same steps) every candidate runs every round."""
    gen = torch.Generator(device=device).manual_seed(12345)
    images = torch.randint(0, 256, batch_shape, dtype=torch.uint8, generator=gen, device=device)
    warmup, timed = WARMUP_STEPS.get(device.type, 1), TIMED_STEPS.get(device.type, 3)
    runners = {c: _Runner(c, online, target, augment, optim) for c in options}
    times: dict[Candidate, list[float]] = {c: [] for c in options}
    dropped: list[Candidate] = []
    try:
        def drop(slow: list[Candidate]) -> None:
            slow = slow + [c for c in runners if c.precision == "bf16" and any(d.precision == "bf16" for d in slow)]
            for cand in dict.fromkeys(slow):
                runners.pop(cand).close(device)
                dropped.append(cand)

        for rnd in range(warmup + timed):
            first: dict[Candidate, float] = {}
            for cand in list(options):
                if cand not in runners:
                    continue
                dt = runners[cand].step(images, gen, device)
                if rnd >= warmup:
                    times[cand].append(dt)
                elif rnd == 0 and early_stop:  # dropped at once: the next (bf16) candidate need not run
                    first[cand] = dt
                    if dt > WARMUP_CUTOFF * min(first.values()):
                        drop([cand])
            medians = {c: statistics.median(times[c]) for c in runners if times[c]}
            if early_stop and medians:
                drop([c for c, m in medians.items() if m > SLOWER_CUTOFF * min(medians.values())])
    finally:
        for runner in runners.values():
            runner.close(device)
    return {c: batch_shape[0] / statistics.median(times[c]) for c in options if c not in dropped}, dropped


class _Runner:
    """One candidate's copies of the networks (in its memory layout) and an optimizer over them."""

    def __init__(self, cand: Candidate, online: Online, target: Branch, augment: BYOLAugment, optim: dict) -> None:
        layout = torch.channels_last if cand.channels_last else torch.contiguous_format
        self.cand, self.augment = cand, augment
        self.net = copy.deepcopy(online).to(memory_format=layout)
        self.tgt = copy.deepcopy(target).to(memory_format=layout)
        self.opt = build_lars(self.net, **optim)

    def step(self, images: torch.Tensor, gen: torch.Generator, device: torch.device) -> float:
        """Seconds one real training step takes (lr 0: the same work, the copies barely move)."""
        start = _sync_clock(device)
        train_step(self.net, self.tgt, self.opt, self.augment, images, gen, 0.0, 0.99,
                   amp=self.cand.precision == "bf16", channels_last=self.cand.channels_last)
        return _sync_clock(device) - start

    def close(self, device: torch.device) -> None:
        self.net = self.tgt = self.opt = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _sync_clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _broadcast_choice(best: Candidate, options: list[Candidate], device: torch.device) -> Candidate:
    t = torch.tensor([options.index(best)], device=device)
    torch.distributed.broadcast(t, src=0)
    return options[int(t.item())]
