"""Whether a training run's encoder may be used, from the metrics the run recorded (torch-free).

A run that diverged (a non-finite loss) or collapsed (every image mapped to about one point) stops with an error
and writes no ``encoder.pt``; its ``summary.json`` says so. These checks are the second line, for what still
carries such a run's metrics: ``byol export`` refuses an encoder (or one whose run directory's summary says the run
diverged after it was written), and both retrain gates reject a candidate bundle whose manifest does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

FAILED = ("diverged", "collapsed")  # ``metrics["stopped"]`` of a run that stopped on its own error


def problems(metrics: dict | None) -> list[str]:
    """What is wrong with a run, from its metrics (empty when nothing is): a failed stop, or a final loss or
    embedding std that is not a finite number."""
    m = metrics or {}
    out = []
    if m.get("stopped") in FAILED:
        out.append(m.get("error") or f"training {m['stopped']} at step {m.get('failed_at_step', '?')}")
    for key in ("final_loss", "embedding_std"):
        value = m.get(key)
        if isinstance(value, int | float) and not math.isfinite(value) and m.get("steps", 0):
            out.append(f"{key} is {value}")
    return out


def run_dir_problems(encoder_file: str | Path) -> list[str]:
    """Problems the encoder's run directory records after the encoder was written: a later session of the same
    run (``--resume``) that diverged leaves the earlier ``encoder.pt`` in place and says so in ``summary.json``."""
    summary = Path(encoder_file).parent / "summary.json"
    try:
        metrics = json.loads(summary.read_text()).get("metrics")
    except (OSError, ValueError, AttributeError):
        return []
    return [p for p in problems(metrics) if (metrics or {}).get("stopped") in FAILED]
