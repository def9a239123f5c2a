"""A user's own folder on a CPU, measured like the demo (issue 18): generated photo-like labelled folders
(``clients.workflows.synthetic``: the labels go to ``labels.csv`` and serve only for scoring) → ``byol train --data
DIR --minutes M`` → ``byol export`` → ``byol embed-folder``, each a real ``byol`` process, so the figures are what a
user's wall clock and the served ONNX vectors give, start-up included. Scored on a seeded split of the folder (5,000
bank / 1,000 queries of 6,000): weighted kNN@20 (T = 0.07) and a linear probe (``index.metrics``), beside raw pixels
and a random-init encoder of the trained one's architecture (BatchNorm calibrated on the bank), in one run.

    .venv/bin/python -m bench.folder_quality [--kinds objects,textures,scenes] [--sizes 64,128] [--minutes 3,10] \\
        [--seeds 0,1,2]
    .venv/bin/python -m bench.folder_quality --sizes 224 --minutes 10 --kinds objects     # 224 px is opt-in
    # the AVX2 floor, imitated (../shared/ENVIRONMENT.md): the kernel settings pass to every byol command
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell \\
        .venv/bin/python -m bench.folder_quality --kinds objects --tag avx2

Resumable per (kind, size, minutes, seed): a finished run's row is read back (``--fresh`` measures it again);
folders are generated once under ``--root``. The goal the table checks: kNN@20 ≥ raw pixels + 5 points. Writes a
table on stdout and ``bench/results/folder_quality.json`` (the CPU, the load, every row; rows of other configurations
are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clients.workflows.synthetic import SCORING_QUERIES, folder_pixels, labelled, scoring_split

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "folder_quality.json"
N_IMAGES = 6000
K, TEMPERATURE = 20, 0.07
GOAL_POINTS = 5.0  # kNN@20 at least raw pixels + 5 points
PROBE_PIXELS = 32  # the raw-pixel probe's side (see raw_pixels)


# ---------------------------------------------------------------------------------------------------- the protocol


def ensure_folder(root: Path, kind: str, size: int, n: int = N_IMAGES, seed: int = 0) -> Path:
    """The generated folder ``root/<kind>-<size>-n<n>-s<seed>``, written once (``labels.csv`` comes last, so a
    folder without it is unfinished and written again)."""
    from clients.workflows.synthetic import LABELS_CSV, make_folder

    folder = root / f"{kind}-{size}-n{n}-s{seed}"
    if not (folder / LABELS_CSV).is_file():
        t0 = time.time()
        make_folder(folder, kind, size, n, seed)
        print(f"generated {folder} ({n} images, {time.time() - t0:.0f} s)", flush=True)
    return folder


def scores(x: np.ndarray, y: np.ndarray, bank: np.ndarray, query: np.ndarray, probe: bool = True) -> dict:
    """kNN@20 (weighted, T = 0.07) and the linear probe of vectors ``x`` on the split, with standard errors."""
    from index import metrics

    s = metrics.score(x[bank], y[bank], x[query], y[query], k=K, probe=probe, extra_k=()).as_dict()
    return {"knn": round(s["knn"], 4), "probe": None if s.get("probe") is None else round(s["probe"], 4),
            "se_knn": round(s["se"]["knn"], 4), "dim": s["dim"]}


def raw_pixels(folder: Path, size: int, cache: Path, probe: bool = True) -> dict:
    """Raw pixels' scores on the folder's split, computed once per folder and size, then read back. kNN on the
    pixels at the input size; the probe on the pixels reduced to ``PROBE_PIXELS`` px a side (box filter): at the
    input size a pixel probe has 12,288-150,528 features, too many to precondition, and took over 10 minutes at
    64 px on one core without converging."""
    from serving.contract.atomic import atomic_write_json

    done = cache / f"{folder.name}-raw{size}.json"
    if done.is_file():
        return json.loads(done.read_text())
    from index.metrics import pixel_features

    paths, y, _ = labelled(folder)
    bank, query = scoring_split(len(paths))
    t0 = time.time()
    images = folder_pixels(folder, paths, size)
    out = scores(pixel_features(images), y, bank, query, probe=False)
    if probe:
        small = images if size <= PROBE_PIXELS else np.stack([np.asarray(Image.fromarray(im).resize(
            (PROBE_PIXELS, PROBE_PIXELS), Image.Resampling.BOX)) for im in images])
        out["probe"] = scores(pixel_features(small), y, bank, query, probe=True)["probe"]
        out["probe_pixels"] = min(size, PROBE_PIXELS)
    out["seconds"] = round(time.time() - t0, 1)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_json(done, out)
    return out


def random_init(encoder_file: Path, folder: Path, probe: bool = True) -> dict:
    """A random-init encoder of ``encoder_file``'s architecture (BatchNorm calibrated on the bank) on the split."""
    from training.artifact import load_encoder
    from training.eval import embed_images, random_init_like

    encoder, _ = load_encoder(encoder_file)
    paths, y, _ = labelled(folder)
    bank, query = scoring_split(len(paths))
    images = folder_pixels(folder, paths, encoder.cfg.input_size)
    rnd = random_init_like(encoder, calibrate_on=images[bank])
    return scores(embed_images(rnd, images), y, bank, query, probe)


# ---------------------------------------------------------------------------------------------------- the product


def byol(args: list[str], log: Path, env: dict) -> tuple[str, float]:
    """One ``byol`` command as a user runs it (a new process): ``(stdout, wall seconds)``; its output is kept in
    ``log``; a failure raises with the command's last lines."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "clients.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True)
    seconds = time.time() - t0
    with log.open("a") as fh:
        fh.write(f"$ byol {' '.join(args)}  ({seconds:.1f} s, exit {proc.returncode})\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode:
        raise RuntimeError(f"byol {args[0]} failed (exit {proc.returncode}): {proc.stderr.strip()[-600:]}")
    return proc.stdout, seconds


def embedded(out: Path, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(vectors, labels, bank, queries)`` of an embed-folder output, its rows matched to ``labels.csv``."""
    from clients.workflows.embedding import read_embeddings

    vectors, rows, _ = read_embeddings(out)
    paths, y, _ = labelled(folder)
    where = {r["path"]: i for i, r in enumerate(rows)}
    missing = [p for p in paths if p not in where]
    if missing:
        raise RuntimeError(f"{len(missing)} labelled files were not embedded, e.g. {missing[0]}")
    x = np.asarray(vectors)[[where[p] for p in paths]]
    bank, query = scoring_split(len(paths))
    return x, y, bank, query


def run_one(folder: Path, kind: str, size: int, minutes: float, root: Path, probe: bool, fresh: bool,
            seed: int = 0, tag: str = "") -> dict:
    """Train → export → embed-folder → score, for one (kind, size, minutes, training seed); read back when done
    before."""
    import shutil

    from serving.contract.atomic import atomic_write_json

    run = root / "runs" / f"{folder.name}-{minutes:g}min{f'-seed{seed}' if seed else ''}{f'-{tag}' if tag else ''}"
    done = run / "row.json"
    if done.is_file() and not fresh:
        return json.loads(done.read_text())
    from bench.machine import load_averages

    load_before = load_averages()
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    env = {**os.environ, "BYOL_HOME": str(root / "home"), "BENTOML_HOME": str(root / "home" / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "true"}
    log = run / "commands.log"
    printed, train_s = byol(["train", "--data", str(folder), "--out", str(run / "train"), "--minutes", f"{minutes:g}",
                             "--set", f"train.seed={seed}"], log, env)
    why = next((line for line in printed.splitlines() if line.startswith("folder preset")), "")
    printed, export_s = byol(["export", "--encoder", str(run / "train" / "encoder.pt"), "--parity-data",
                              str(folder)], log, env)
    version = re.search(r"^version\s+(\S+)", printed, re.M).group(1)
    _, embed_s = byol(["embed-folder", str(folder), "--out", str(run / "emb"), "--model", version, "--quiet"], log,
                      env)
    x, y, bank, query = embedded(run / "emb", folder)
    summary = json.loads((run / "train" / "summary.json").read_text())
    m = summary["metrics"]
    row = {"kind": kind, "size": size, "minutes": minutes, "seed": seed, "tag": tag, "n_images": len(y),
           "bank": len(bank), "queries": len(query), "preset": why, "steps": m["steps"], "stopped": m["stopped"],
           "images_per_s": m["images_per_s"], "precision": m.get("precision"), "train_seconds": m.get("seconds"),
           "seconds": {"train_command": round(train_s, 1), "export": round(export_s, 1),
                       "embed_folder": round(embed_s, 1)},
           "encoder": summary["config"]["encoder"], "batch": summary["config"]["train"]["batch_size"],
           "cpu": summary.get("machine"),  # the trainer's CPU, flags, dispatch level, threads, kernel env
           "trained": scores(x, y, bank, query, probe),
           "random_init": random_init(run / "train" / "encoder.pt", folder, probe),
           "raw_pixels": raw_pixels(folder, size, root / "baselines", probe)}
    row["load_1_5_15"] = {"before": load_before, "after": load_averages()}  # each row's own, read back with it
    row["margin_points"] = round(100 * (row["trained"]["knn"] - row["raw_pixels"]["knn"]), 2)
    row["goal_met"] = row["margin_points"] >= GOAL_POINTS
    atomic_write_json(done, row)
    return row


# ---------------------------------------------------------------------------------------------------- the report


def line(r: dict) -> str:
    def pct(v) -> str:
        return "   -  " if v is None else f"{100 * v:6.2f}"

    t, rnd, raw = r["trained"], r["random_init"], r["raw_pixels"]
    return (f"{r['kind']:<9}{r['size']:>4} px {r.get('tag', ''):<5}{r['minutes']:>4g} min s{r.get('seed', 0)} "
            f"{r['steps']:>6} steps  "
            f"kNN@20 {pct(t['knn'])} "
            f"± {100 * t['se_knn']:.1f}  random {pct(rnd['knn'])}  raw {pct(raw['knn'])}  {r['margin_points']:+6.2f}"
            f"{' ok' if r['goal_met'] else '   '}  probe {pct(t['probe'])} / {pct(rnd['probe'])} / "
            f"{pct(raw['probe'])}  train {r['seconds']['train_command']:.0f} s")


HEADER = ("kind      size   budget  seed  steps  kNN@20 (trained)  random-init  raw    vs raw (goal +5)   probe "
          "trained / random / raw")


def save(rows: list[dict], record: dict, args: argparse.Namespace) -> None:
    """Merge this run's rows into the results file (rows of other (kind, size, minutes) are kept)."""
    import torch

    from bench.machine import machine
    from serving.contract.atomic import atomic_write_json

    def key(r: dict) -> tuple:
        return r["kind"], r["size"], r["minutes"], r.get("seed", 0), r.get("tag", "")

    previous = json.loads(RESULTS.read_text()).get("rows", []) if RESULTS.is_file() else []
    keep = [r for r in previous if key(r) not in {key(r) for r in rows}]
    atomic_write_json(RESULTS, {
        "benchmark": "folder_quality",
        "protocol": f"generated labelled folder of {args.n} images (+3 broken files); seeded split {SCORING_QUERIES} "
                    f"queries / the rest as bank; weighted kNN k={K} T={TEMPERATURE} and a linear probe on "
                    "embed-folder's ONNX vectors; raw pixels at the input size; random init of the same "
                    "architecture with BatchNorm calibrated on the bank",
        "goal": f"kNN@20 >= raw pixels + {GOAL_POINTS:g} points", "command": " ".join(sys.argv),
        "machine": machine(torch=torch.__version__), "load": record,
        "rows": sorted(keep + rows, key=key)})


def main() -> None:
    from bench.machine import add_load_args, cpu_line, load_line, recorded_load

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default="objects,textures,scenes")
    p.add_argument("--sizes", default="64,128", help="input sides (224 is opt-in: --sizes 64,128,224)")
    p.add_argument("--minutes", default="3,10", help="training budgets, the user's wall clock")
    p.add_argument("--n", type=int, default=N_IMAGES, help="images per folder")
    p.add_argument("--seeds", default="0", help="training seeds (train.seed), e.g. 0,1,2: runs differ by seed")
    p.add_argument("--tag", default="", help="names a machine setting (e.g. avx2) in the run directory and rows")
    p.add_argument("--no-probe", dest="probe", action="store_false", help="kNN only (the probe takes seconds)")
    p.add_argument("--root", type=Path, default=Path("runs/folder_quality"))
    p.add_argument("--fresh", action="store_true", help="measure finished (kind, size, minutes) again")
    add_load_args(p)
    args = p.parse_args()
    root = args.root.resolve()
    rows = []
    with recorded_load(args.strict, args.max_load) as record:
        for kind in args.kinds.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                folder = ensure_folder(root / "data", kind, size, args.n)
                for minutes in (float(m) for m in args.minutes.split(",")):
                    for seed in (int(s) for s in args.seeds.split(",")):
                        row = run_one(folder, kind, size, minutes, root, args.probe, args.fresh, seed, args.tag)
                        rows.append(row)
                        if len(rows) == 1:
                            print(HEADER)
                        print(line(row), flush=True)
    print(cpu_line())
    print(load_line(record))
    save(rows, record, args)


if __name__ == "__main__":
    main()
