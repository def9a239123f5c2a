"""``bench/gpu.sh``'s own record: each stage's exit status, wall seconds (Python start-up and imports included) and
the timeout it ran under, appended to ``gpu_stages.json`` as soon as the stage ends.

Exit status 124 or 137 means the stage's ``timeout`` stopped it: its own JSON is then missing, the later stages
still ran. No torch import here: it runs between stages and should cost nothing.

    python -m bench.gpu_stages JSON NAME EXIT_STATUS SECONDS TIMEOUT_S [--gpu NAME] [--smoke]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TIMED_OUT = (124, 137)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_stages", description=__doc__.split("\n")[0])
    p.add_argument("json", type=Path)
    p.add_argument("name")
    p.add_argument("rc", type=int)
    p.add_argument("seconds", type=float)
    p.add_argument("timeout_s", type=float)
    p.add_argument("--gpu", default=None, help="the GPU's name (nvidia-smi's), recorded beside the machine")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    from bench.machine import machine
    from serving.contract.atomic import atomic_write_json

    record = json.loads(args.json.read_text()) if args.json.is_file() else {"benchmark": "gpu_sh", "stages": []}
    record["stages"].append({"name": args.name, "rc": args.rc, "seconds": args.seconds, "timeout_s": args.timeout_s,
                             "timed_out": args.rc in TIMED_OUT})
    record.update(smoke=args.smoke, total_s=round(sum(s["seconds"] for s in record["stages"]), 1),
                  failed=[s["name"] for s in record["stages"] if s["rc"] != 0], machine=machine(gpu=args.gpu or None))
    atomic_write_json(args.json, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
