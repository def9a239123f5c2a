"""What every benchmark records beside its figures: the machine, and how busy it was before, during and after.

A benchmark on a busy machine measures the other work too, and not evenly: on 2 shared cores a batched exact FAISS
search ran 4x slower with 2 OpenMP threads than with 1 (threads spinning for a core another process held) while an
IVF search barely moved, so a busy run even inflates *ratios*. So every run records:

* the load averages (``os.getloadavg``: 1, 5, 15 min) before the work starts and after it ends;
* the CPU that *other* processes used during the run, in cores (``/proc/stat`` busy time minus this process's own,
  over the wall time; Linux only) — unlike the load average it does not lag and does not count the benchmark itself;
* a verdict: the run is **busy** when the 1-minute load before it is above ``BUSY_LOAD_PER_CORE`` × cores (0.5: on 2
  cores, one other runnable task on average, i.e. about half the machine taken) or when others used more than that
  many cores during it. A busy run is flagged in the table and the JSON; with ``--strict`` it is refused before
  anything is measured (exit status 3). The 1-minute average lags by about a minute: after heavy work, wait for it.

Use :func:`add_load_args` + :func:`recorded_load` (one ``with`` around the measured work), then
:func:`load_line` for the printed table and the returned dict for the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serving.contract.machine import cpu_info, cpu_line  # noqa: F401  (the CPU of every figure; re-exported)


def private_store(prefix: str) -> Path:
    """A private ``BYOL_HOME`` and BentoML model store for one benchmark run (the caller's are never touched). Call
    before bentoml is imported: it reads ``BENTOML_HOME`` once. OpenMP threads do not spin either
    (``OMP_WAIT_POLICY=PASSIVE`` unless set): on shared cores spinning threads took the CPU the servers needed, and
    made eager PyTorch 20x slower (326 vs ~16 ms a batch), which would flatter ONNX Runtime's lead."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["BYOL_HOME"], os.environ["BENTOML_HOME"] = str(home), str(home / "bentoml")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return home

BUSY_LOAD_PER_CORE = 0.5
REFUSED_EXIT = 3


def cores() -> int:
    """CPUs this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def load_averages() -> list[float]:
    """1, 5 and 15-minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def busy_limit(n_cores: int | None = None) -> float:
    """The 1-minute load above which a run counts as busy (``BUSY_LOAD_PER_CORE`` × cores)."""
    return round(BUSY_LOAD_PER_CORE * (n_cores or cores()), 2)


def machine(**extra) -> dict:
    """Platform, cores, the CPU (:func:`cpu_info`), Python and torch/ORT/FAISS versions when importable, time,
    1-minute load average now."""
    info = {"platform": platform.platform(), "cpu_cores": cores(), "cpu": cpu_info(),
            "python": platform.python_version(),
            "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "load_avg_1m_at_start": load_average(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), **extra}
    for name in ("torch", "onnxruntime", "faiss", "numpy"):
        module = sys.modules.get(name)
        if module is not None:
            info[name] = getattr(module, "__version__", "?")
    return info


def load_check(limit: float | None = None, refuse: bool = False) -> str | None:
    """A warning when the 1-minute load average is above ``limit`` (default :func:`busy_limit`); raise
    ``SystemExit`` instead with ``refuse``."""
    limit = busy_limit() if limit is None else limit
    load = load_average()
    if load <= limit:
        return None
    msg = f"machine busy: load average {load} > {limit}; timings are not comparable to a quiet run"
    if refuse:
        print(f"refused: {msg} (wait, or run without --strict)", file=sys.stderr)
        raise SystemExit(REFUSED_EXIT)
    print(f"WARNING: {msg}", file=sys.stderr)
    return msg


def _cpu_busy_seconds() -> float | None:
    """Seconds all CPUs spent busy since boot (``/proc/stat``), None where there is no such file."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already inside user


def _own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def add_load_args(parser: argparse.ArgumentParser) -> None:
    """The shared flags: ``--strict`` (refuse a busy machine) and ``--max-load`` (the 1-minute limit)."""
    parser.add_argument("--strict", action="store_true",
                        help=f"refuse to run when the machine is busy (1-minute load > {BUSY_LOAD_PER_CORE} x cores)")
    parser.add_argument("--max-load", type=float, default=None,
                        help=f"1-minute load average counted as busy (default {BUSY_LOAD_PER_CORE} x cores = "
                             f"{busy_limit()})")


@contextmanager
def recorded_load(strict: bool = False, limit: float | None = None) -> Iterator[dict]:
    """Around the measured work: yields a dict that holds the load before, and after the block also the load after,
    the other processes' CPU during it and the ``busy`` verdict. A busy start is flagged on stderr, or refused
    (``SystemExit(3)``, nothing measured) when ``strict``."""
    limit = busy_limit() if limit is None else float(limit)
    record = {"cores": cores(), "limit_1m": limit, "before": load_averages(), "strict": strict}
    record["busy_before"] = record["before"][0] > limit
    if record["busy_before"]:
        load_check(limit, refuse=strict)
    busy0, own0, t0 = _cpu_busy_seconds(), _own_cpu_seconds(), time.monotonic()
    try:
        yield record
    finally:
        wall = max(time.monotonic() - t0, 1e-9)
        busy1, own1 = _cpu_busy_seconds(), _own_cpu_seconds()
        others = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
        record.update(after=load_averages(), seconds=round(wall, 1),
                      other_cores_during=None if others is None else round(others, 2))
        record["busy"] = bool(record["busy_before"] or (others is not None and others > limit))


def load_line(record: dict) -> str:
    """One line for a benchmark's printed table."""
    others = record.get("other_cores_during")
    line = (f"load 1m {record['before'][0]:.2f} -> {record.get('after', ['?'])[0]} (busy above {record['limit_1m']}"
            f" on {record['cores']} cores); other processes used "
            f"{'?' if others is None else f'{others:.2f}'} cores during the run")
    return line + ("  ** BUSY: figures not comparable to a quiet run **" if record.get("busy") else "")
