"""Memory of a streamed training run on a large folder: does ``byol train --data DIR`` stay bounded at 100,000 images?

Issue 11's goal: a 100,000-image folder at 128 px trains with the process's RSS < 3 GB. This generates the folder
(``--images`` files of ``--min-side``–``--max-side`` px JPEGs in nested sub-folders — ``--distinct`` different images,
the rest hard links to them, so generating stays quick while every file is a separate path the loader must list,
shard and open), then runs the real command a user would, ``byol train --data DIR --size 128 --minutes M``, as a
subprocess, and samples every ``--every`` seconds from outside:

* the RSS of the training process itself (what the goal names), and
* the proportional set size (PSS) of the whole process tree (the trainer and its DataLoader workers: shared pages —
  torch's libraries, forked memory — counted once in all, not once per process as summing RSS would).

Beside the peaks it prints what the folder's pixels would take decoded at the input size and at full resolution (what
an in-memory loader would need), and the steps the run made. Writes ``bench/results/stream_memory.json``.

    .venv/bin/python bench/stream_memory.py [--images 100000] [--size 128] [--minutes 3] [--folder DIR]

The folder is kept in ``--folder`` (default ``$TMPDIR/byol-stream-bench``) for reruns; ~1.3 GB of distinct JPEG data
for the defaults, less with more links.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "stream_memory.json"


def make_folder(root: Path, n: int, distinct: int, min_side: int, max_side: int, seed: int = 0) -> dict:
    """``n`` JPEG paths under ``root`` (1,000 nested sub-folders), hard links to ``distinct`` different images kept
    beside ``root``; returns their count and decoded size. Reused when ``complete.json`` beside ``root`` names the
    same parameters."""
    from PIL import Image

    stamp = root.parent / "complete.json"  # beside the folder, not in it
    params = {"n": n, "distinct": distinct, "min_side": min_side, "max_side": max_side, "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()).get("params") == params:
        return json.loads(stamp.read_text())
    rng = np.random.default_rng(seed)
    originals, sides = [], []
    src = root.parent / "originals"  # outside the trained folder: only the n links are scanned
    src.mkdir(parents=True, exist_ok=True)
    for i in range(distinct):
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1.0, 3)
        pixels = (ramp + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        path = src / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=85)
        originals.append(path)
        sides.append((w, h))
    full_pixels = 0
    for j in range(n):
        i = j % distinct
        sub = root / f"d{j % 100:02d}" / f"e{(j // 100) % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        target = sub / f"img{j:06d}.jpg"
        if not target.exists():
            os.link(originals[i], target)
        full_pixels += sides[i][0] * sides[i][1] * 3
    info = {"params": params, "files": n, "decoded_full_resolution_bytes": full_pixels}
    stamp.write_text(json.dumps(info))
    return info


def _field(pid: int, name: str, path: str) -> int:
    try:
        with open(f"/proc/{pid}/{path}") as fh:
            return sum(int(line.split()[1]) * 1024 for line in fh if line.startswith(name))
    except OSError:
        return 0


def sample(pid: int) -> tuple[int, int, int]:
    """(RSS of ``pid``, PSS of its process tree, processes in the tree), in bytes."""
    from clients.local_server import descendants

    pids = [pid, *descendants(pid)]
    return _field(pid, "VmRSS:", "status"), sum(_field(p, "Pss:", "smaps_rollup") for p in pids), len(pids)


def main() -> int:
    from bench.machine import add_load_args, load_line, machine, recorded_load

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--distinct", type=int, default=2_000)
    p.add_argument("--min-side", type=int, default=160)
    p.add_argument("--max-side", type=int, default=400)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--every", type=float, default=0.25, help="seconds between two memory samples")
    p.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "byol-stream-bench")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides passed on to byol train (e.g. train.batch_size=64)")
    add_load_args(p)
    args = p.parse_args()

    t0 = time.time()
    info = make_folder(args.folder / "images", args.images, args.distinct, args.min_side, args.max_side)
    print(f"folder: {info['files']} files ({args.distinct} distinct) in {time.time() - t0:.0f} s", flush=True)
    run = Path(tempfile.mkdtemp(prefix="byol-stream-run-"))
    cmd = [str(REPO / ".venv" / "bin" / "byol"), "train", "--data", str(args.folder / "images"), "--size",
           str(args.size), "--minutes", str(args.minutes), "--out", str(run / "run"), "--set", "train.progress=false"]
    for item in args.overrides:
        cmd += ["--set", item]
    peak_rss = peak_pss = procs = 0
    with recorded_load(args.strict, args.max_load) as load:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            rss, pss, n = sample(proc.pid)
            peak_rss, peak_pss, procs = max(peak_rss, rss), max(peak_pss, pss), max(procs, n)
            time.sleep(args.every)
        log = proc.stdout.read()
    if proc.returncode != 0:
        print(log[-3000:], file=sys.stderr)
        return 1
    summary = json.loads((run / "run" / "summary.json").read_text())
    decoded_at_size = info["files"] * args.size * args.size * 3
    gib = 2**30
    row = {"files": info["files"], "distinct": args.distinct, "size": args.size, "minutes": args.minutes,
           "overrides": args.overrides,
           "steps": summary["metrics"].get("steps"), "images_per_s": summary["metrics"].get("images_per_s"),
           "precision": summary["metrics"].get("precision"),
           "peak_rss_trainer_bytes": peak_rss, "peak_pss_tree_bytes": peak_pss, "max_processes": procs,
           "decoded_at_input_size_bytes": decoded_at_size,
           "decoded_full_resolution_bytes": info["decoded_full_resolution_bytes"],
           "goal": "peak RSS of the training process < 3 GiB", "meets_goal": peak_rss < 3 * gib,
           "command": " ".join(cmd), "what_it_said": [ln for ln in log.splitlines() if "preset" in ln.lower()][:3]}
    print(f"{'files':>8} {'size':>5} {'steps':>6} {'img/s':>7} {'peak RSS trainer':>17} {'peak PSS tree':>14} "
          f"{'decoded @size':>14} {'decoded full':>13}")
    print(f"{row['files']:>8} {args.size:>5} {row['steps']:>6} {row['images_per_s']:>7} "
          f"{peak_rss / gib:>15.2f} G {peak_pss / gib:>12.2f} G {decoded_at_size / gib:>12.2f} G "
          f"{info['decoded_full_resolution_bytes'] / gib:>11.2f} G")
    print(f"goal (RSS < 3 GiB): {'met' if row['meets_goal'] else 'NOT met'}; {load_line(load)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "stream_memory", "machine": machine(), "load": load, **row},
                                   indent=2))
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
