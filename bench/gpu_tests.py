"""Stage 2 of ``bench/gpu.sh``: the CUDA tests (``tests/training/test_cuda.py``: no host sync inside a training
step, the data and the views on the device, the measured precision, a tiny run end to end), each test's outcome and
seconds written as JSON.

Run through pytest (a path on its command line, not an import: benchmarks never import the tests). On a machine
without CUDA every test skips, and the JSON says so.

    python -m bench.gpu_tests --out cuda_tests.json [pytest args...]
"""

from __future__ import annotations

import argparse
import time

TESTS = "tests/training/test_cuda.py"


class Outcomes:
    """A pytest plugin that keeps each test's outcome, its seconds and, for a failure, the error's last line."""

    def __init__(self) -> None:
        self.tests: dict[str, dict] = {}

    def pytest_runtest_logreport(self, report) -> None:
        entry = self.tests.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0})
        entry["seconds"] = round(entry["seconds"] + report.duration, 3)
        if report.failed:
            entry["outcome"] = "failed" if report.when == "call" else f"error in {report.when}"
            entry["error"] = str(report.longrepr).strip().splitlines()[-1][:500] if report.longrepr else ""
        elif report.skipped and entry["outcome"] == "passed":
            entry["outcome"] = "skipped"

    def counts(self) -> dict[str, int]:
        out = {"passed": 0, "failed": 0, "skipped": 0}
        for entry in self.tests.values():
            key = entry["outcome"] if entry["outcome"] in out else "failed"
            out[key] += 1
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_tests", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON path")
    args, extra = p.parse_known_args(argv)
    import pytest

    from bench.gpu_common import write

    plugin = Outcomes()
    t0 = time.time()
    code = int(pytest.main(["-q", "-p", "no:cacheprovider", TESTS, *extra], plugins=[plugin]))
    counts = plugin.counts()
    write(args.out, "cuda_tests", {"exit_code": code, **counts, "seconds": round(time.time() - t0, 1),
                                   "tests": plugin.tests})
    print(f"CUDA tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
          f"→ {args.out}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
