"""Fault injection at the OS boundary, for tests: an ``OSError`` (ENOSPC, EIO) from a chosen call, or ``kill -9``
right after a chosen call (in a subprocess). Only ``os`` functions are replaced, never our own code.

Write points: ``os.open``, ``os.write`` (a failing write first writes half of its bytes, as a short write before a
full disk does), ``os.fsync``, ``os.ftruncate``, ``os.rename``, ``os.replace``. A call counts when the path it
touches (the descriptor's file for fd-based calls, the destination for renames) contains ``match``.

In-process::

    with Faults(tmp_path) as f:          # count
        scenario()
    points = f.calls                     # [(name, path), ...]
    with Faults(tmp_path, fail=("fsync", 3)):  # the 3rd matching fsync raises ENOSPC
        scenario()

In a subprocess (``kill -9`` after the ``n``-th matching call)::

    python -c "from tests.index.faults import run_killed; run_killed()" NAME MATCH N -m module args...
"""

from __future__ import annotations

import errno as errnos
import os
import re
import signal
import sys

POINTS = ("open", "write", "fsync", "ftruncate", "rename", "replace")
KILL_RUNNER = "from tests.index.faults import run_killed; run_killed()"


def _path_of(name: str, args: tuple) -> str:
    if name in ("write", "fsync", "ftruncate"):
        try:
            return os.readlink(f"/proc/self/fd/{args[0]}")
        except OSError:
            return ""
    if name in ("rename", "replace"):
        return os.fspath(args[1])
    return os.fspath(args[0])


class Faults:
    """Counts (and optionally fails) the OS write calls touching paths that match ``match`` (a regex)."""

    def __init__(self, match, fail: tuple[str, int] | None = None, errno: int = errnos.ENOSPC,
                 times: int = 1) -> None:
        self.match = re.compile(re.escape(str(match)) if not isinstance(match, re.Pattern) else match.pattern)
        self.fail, self.errno, self.times = fail, errno, times
        self.calls: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str]] = []
        self._real = {}
        self._counts = dict.fromkeys(POINTS, 0)

    def _wrap(self, name: str):
        real = self._real[name]

        def call(*args, **kwargs):
            path = _path_of(name, args)
            if not self.match.search(path):
                return real(*args, **kwargs)
            self._counts[name] += 1
            self.calls.append((name, path))
            if self.fail and self.fail[0] == name and self.fail[1] <= self._counts[name] < self.fail[1] + self.times:
                self.failed.append((name, path))
                if name == "write" and len(args[1]) > 1:
                    real(args[0], bytes(args[1])[: len(args[1]) // 2])  # a short write, then the disk is full
                raise OSError(self.errno, os.strerror(self.errno), path)
            return real(*args, **kwargs)

        return call

    def __enter__(self) -> Faults:
        for name in POINTS:
            self._real[name] = getattr(os, name)
            setattr(os, name, self._wrap(name))
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self._real.items():
            setattr(os, name, fn)


def kill_after(name: str, match: str, nth: int) -> None:
    """In this process: SIGKILL itself right after the ``nth`` call of ``os.<name>`` touching a path matching
    ``match`` has completed (as a power cut would, between two steps)."""
    real, pattern, count = getattr(os, name), re.compile(match), [0]

    def call(*args, **kwargs):
        out = real(*args, **kwargs)
        if pattern.search(_path_of(name, args)):
            count[0] += 1
            if count[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(os, name, call)


def run_killed() -> None:
    """Entry of a subprocess: ``NAME MATCH N -m module args...`` or ``NAME MATCH N -c code args...``."""
    import runpy

    name, match, nth, mode, target, *rest = sys.argv[1:]
    kill_after(name, match, int(nth))
    sys.argv = [target if mode == "-m" else "-c", *rest]
    if mode == "-m":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        exec(compile(target, "<kill-test>", "exec"), {"__name__": "__main__"})
