"""``byol demo``: what ``make demo`` runs — train, eval, export, index, probe, promote, serve on Fashion-MNIST."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from clients.workflows.demo import DemoConfig


def parser() -> argparse.ArgumentParser:
    from clients.workflows import demo

    p = argparse.ArgumentParser(prog="byol demo", description=demo.__doc__)
    p.add_argument("--out", type=Path, default=DemoConfig.out, help="training run directory")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--retrain", action="store_true", help="train again even if the run already has an encoder")
    p.add_argument("--no-serve", dest="serve", action="store_false", help="stop after promoting (no server)")
    return p


def main(argv: list[str]) -> int:
    from clients.workflows.demo import run_demo

    return run_demo(DemoConfig(**vars(parser().parse_args(argv))), say=functools.partial(print, flush=True))
