"""Import torchvision safely.

PyPI's torchvision 0.28.0 is a CUDA build; beside the CPU torch 2.13.0 wheel its import fails with
``operator torchvision::nms does not exist``. Declaring the two missing op schemas first makes models and
transforms.v2 work (torchvision.io / torchvision.ops kernels do not; we decode with Pillow). Where the real ops
exist (GPU machines, CPU wheels from the PyTorch index) nothing is patched.
"""

from __future__ import annotations

import torch

_LIB = None  # keep the Library object alive: dropping it unregisters the schemas


def _define_missing_ops() -> None:
    global _LIB
    if _LIB is None:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIB = lib


def import_torchvision():
    """Return the torchvision module, patching the missing op schemas only when needed."""
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        import sys

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _define_missing_ops()
        import torchvision
    return torchvision
