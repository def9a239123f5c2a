"""Stage 5 of ``bench/gpu.sh``: the standard evaluation of the run's encoder, bounded in time, beside raw pixels.

The protocol is the project's one (``index.metrics``): the full train split (60k) is the kNN bank, the full test
split (10k) the queries, weighted kNN at k = 20 and 200. The vectors are computed on the GPU (``embed_images`` on the
encoder's device: 70k images in a few batches); the scoring stays the numpy path every other figure of the project
comes from, which on the GPU box's 16 cores takes seconds (one busy core here: ~18 s per kNN of 60k × 10k).

The linear probe is the one figure whose cost is open-ended (L-BFGS to convergence: hundreds of iterations on
pixels), so it gets what is left of ``--budget`` after the kNN: half for the encoder's vectors, the rest for the
pixels, each fitted in rounds (:func:`probe_within`) that stop at convergence or when their share is spent. The JSON
says how many iterations each got and whether it converged, so a bounded probe is never mistaken for a converged one.

    python -m bench.gpu_eval --encoder RUN/encoder.pt --data-root DIR --out JSON [--budget 55]
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from index import metrics
from index.probe import LinearProbe

FIRST_ROUND = 40  # probe iterations before the time per iteration is known
SAFETY = 0.85  # of the time left that the next round may plan for (each round repeats the standardisation)


def probe_within(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, seconds: float) -> dict:
    """The linear probe (``index.probe.LinearProbe``, warm-started round to round) fitted for at most about
    ``seconds``: a first round of :data:`FIRST_ROUND` iterations times one iteration, the next ones take as many as
    the time left allows; stops when converged. Returns the accuracy, iterations, convergence and seconds."""
    classes = [str(c) for c in range(int(max(y_tr.max(), y_te.max())) + 1)]
    t0, fitted, iterations, budget = time.monotonic(), None, 0, FIRST_ROUND
    quiet = logging.getLogger("index.probe")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # each unconverged round warns; the JSON says whether the last one converged
    try:
        while True:
            r0 = time.monotonic()
            fitted = LinearProbe.fit(x_tr, y_tr, classes, max_iter=budget, init=fitted)
            iterations += fitted.iterations
            left = seconds - (time.monotonic() - t0)
            per_iter = (time.monotonic() - r0) / max(1, fitted.iterations)
            budget = int(SAFETY * left / per_iter) if per_iter > 0 else 0
            if fitted.converged or budget < 1:
                break
    finally:
        quiet.setLevel(level)
    acc = metrics.accuracy(fitted, x_te, y_te)
    return {"probe": acc, "probe_iterations": iterations, "probe_converged": fitted.converged,
            "probe_seconds": round(time.monotonic() - t0, 2), "probe_se": metrics.standard_error(acc, len(y_te))}


def knn(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> dict:
    """kNN@20 and @200 on the standard protocol (``index.metrics.score`` without its unbounded probe)."""
    t0 = time.monotonic()
    scores = metrics.score(x_tr, y_tr, x_te, y_te, probe=False).as_dict()
    return {**scores, "knn_seconds": round(time.monotonic() - t0, 2)}


def load(data_root: str | None, max_train: int | None, max_test: int | None):
    """The two Fashion-MNIST splits, cut to their first ``max_*`` images (the smoke's small bank)."""
    from serving.contract.sources import load_fashion_mnist

    tr, te = load_fashion_mnist(data_root, "train"), load_fashion_mnist(data_root, "test")
    return tr.images[:max_train], tr.labels[:max_train], te.images[:max_test], te.labels[:max_test]


def embed(encoder_path: str, images: list[np.ndarray], batch: int) -> tuple[list[np.ndarray], str]:
    """Each image set through the encoder on the GPU (the CPU without one); unit float32 rows back on the host."""
    from bench.gpu_common import device
    from training.artifact import load_encoder
    from training.eval import embed_images

    encoder, _ = load_encoder(encoder_path)
    dev = device()
    encoder.to(dev)
    return [embed_images(encoder, x, batch_size=batch) for x in images], str(dev)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_eval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True, help="encoder.pt of the run")
    p.add_argument("--data-root", default=None, help="folder of the Fashion-MNIST IDX files")
    p.add_argument("--budget", type=float, default=55.0, help="seconds for the whole evaluation (the probes get "
                                                              "what the rest leaves)")
    p.add_argument("--batch", type=int, default=2048, help="embedding batch")
    p.add_argument("--max-train", type=int, default=None, help="bank size (default: all 60k; the smoke cuts it)")
    p.add_argument("--max-test", type=int, default=None, help="queries (default: all 10k)")
    p.add_argument("--out", required=True, help="JSON path")
    args = p.parse_args(argv)
    from bench.gpu_common import GOAL_KNN, write

    t0 = time.monotonic()
    img_tr, y_tr, img_te, y_te = load(args.data_root, args.max_train, args.max_test)
    seconds = {"load": round(time.monotonic() - t0, 2)}
    t1 = time.monotonic()
    (x_tr, x_te), dev = embed(args.encoder, [img_tr, img_te], args.batch)
    seconds["embed"] = round(time.monotonic() - t1, 2)
    p_tr, p_te = metrics.pixel_features(img_tr), metrics.pixel_features(img_te)
    trained, pixels = knn(x_tr, y_tr, x_te, y_te), knn(p_tr, y_tr, p_te, y_te)
    left = args.budget - (time.monotonic() - t0)
    trained.update(probe_within(x_tr, y_tr, x_te, y_te, left / 2))
    pixels.update(probe_within(p_tr, y_tr, p_te, y_te, args.budget - (time.monotonic() - t0)))
    seconds["total"] = round(time.monotonic() - t0, 2)
    write(args.out, "gpu_eval", {
        "encoder": args.encoder, "embedded_on": dev, "n_train": len(y_tr), "n_test": len(y_te),
        "budget_s": args.budget, "seconds": seconds, "goal_knn": GOAL_KNN, "meets_goal": trained["knn"] >= GOAL_KNN,
        "standard_protocol": {"trained": trained, "raw_pixels": pixels}})
    print(f"standard protocol ({len(y_tr)} bank, {len(y_te)} queries, vectors on {dev}): kNN@20 "
          f"{100 * trained['knn']:.2f} % (goal ≥ {100 * GOAL_KNN:g}), kNN@200 {100 * trained['knn_200']:.2f}, probe "
          f"{100 * trained['probe']:.2f} ({trained['probe_iterations']} it, converged "
          f"{trained['probe_converged']}); raw pixels kNN@20 {100 * pixels['knn']:.2f}, probe "
          f"{100 * pixels['probe']:.2f}; {seconds['total']:.0f} s  → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
