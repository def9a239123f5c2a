"""What every benchmark records beside its figures: the machine, and how busy it was before and after the run.

A benchmark on a busy machine measures the other work too; ``load_check`` flags (or refuses) such a run.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def machine(**extra) -> dict:
    """Platform, cores, Python and torch/ORT/FAISS versions when importable, time, 1-minute load average now."""
    info = {"platform": platform.platform(), "cpu_cores": os.cpu_count(), "python": platform.python_version(),
            "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "load_avg_1m_at_start": load_average(), **extra}
    for name in ("torch", "onnxruntime", "faiss"):
        module = sys.modules.get(name)
        if module is not None:
            info[name] = getattr(module, "__version__", "?")
    return info


def load_check(limit: float, refuse: bool = False) -> str | None:
    """A warning when the 1-minute load average is above ``limit`` (raise instead with ``refuse``)."""
    load = load_average()
    if load <= limit:
        return None
    msg = f"machine busy: load average {load} > {limit}; timings are not comparable to a quiet run"
    if refuse:
        raise SystemExit(msg)
    print(f"WARNING: {msg}", file=sys.stderr)
    return msg
