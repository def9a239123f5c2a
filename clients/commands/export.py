"""``byol export``: encoder file → checked ONNX bundle → BentoML model store."""

from __future__ import annotations

import argparse
from pathlib import Path

from clients import tables
from clients.workflows.exporting import DEFAULT_PARITY_N, ExportConfig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byol export", description="Export f_θ to an ONNX bundle, check parity on "
                                "real images through the serving path, and register it in the model store.")
    p.add_argument("--encoder", required=True, type=Path, help="encoder file written by training (encoder.pt)")
    p.add_argument("--parity-data", default=None,
                   help="images for the parity check: fashion-mnist, cifar10 or a folder (default: fashion-mnist "
                        "when installed, else synthetic images)")
    p.add_argument("--data-root", default=None, help="dataset location for --parity-data fashion-mnist|cifar10")
    p.add_argument("--parity-n", type=int, default=DEFAULT_PARITY_N, help="how many parity images (default 64)")
    p.add_argument("--out", type=Path, default=None, help="keep the bundle in this new directory")
    p.add_argument("--no-register", dest="register", action="store_false",
                   help="do not register in the BentoML model store")
    p.add_argument("--fp16", action="store_true", help="also write encoder_fp16.onnx (GPU serving)")
    p.add_argument("--int8", action="store_true",
                   help="also write encoder_int8.onnx: static int8, calibrated on the parity images, ~2x the fp32 "
                        "graph's speed on CPU at 224 px, parity bound 0.1 (serve it with "
                        "BYOL_ENCODER_FILE=encoder_int8.onnx)")
    p.add_argument("--atol", type=float, default=1e-4, help="max |ONNX - PyTorch| allowed (default 1e-4)")
    p.add_argument("--min-cosine", type=float, default=0.9999, help="min cosine ONNX vs PyTorch (default 0.9999)")
    return p


def main(argv: list[str]) -> int:
    from clients.workflows.exporting import export

    print(tables.export(export(ExportConfig(**vars(parser().parse_args(argv))))))
    return 0
