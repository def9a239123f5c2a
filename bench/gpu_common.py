"""What every stage of ``bench/gpu.sh`` shares: the device it runs on, and one way to write its JSON.

Each stage is its own process (a stage that hangs is killed by its ``timeout`` without taking the others' figures
with it), so each writes its own JSON the moment it ends, with the machine beside the figures: the CPU
(:func:`bench.machine.machine`) and, above all, the GPU's name — a figure without it cannot be compared with any
other.
"""

from __future__ import annotations

import os
from pathlib import Path

GOAL_KNN = 0.92  # issue 19: standard-protocol kNN@20 on Fashion-MNIST after 5 minutes of training on one H200
GOAL_STEP_RATIO = 3.0  # issue 19: training throughput ours / the reference per-image loop, same model and batch


def device():
    """The GPU when there is one, else the CPU (``bench/gpu.sh --smoke`` runs the same stages there)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def gpu_machine(**extra) -> dict:
    """:func:`bench.machine.machine` plus the GPU's name and the torch / torchvision versions."""
    import torch

    from bench.machine import machine
    from training.tv import import_torchvision

    return machine(gpu=gpu_name(), torch=torch.__version__, torchvision=import_torchvision().__version__, **extra)


def write(path: str | os.PathLike, benchmark: str, payload: dict, **machine_extra) -> Path:
    """``{"benchmark", "machine", **payload}`` written atomically (a stage killed mid-write leaves no torn file)."""
    from serving.contract.atomic import atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"benchmark": benchmark, "machine": gpu_machine(**machine_extra), **payload})
    return path
