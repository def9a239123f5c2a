"""What a run leaves in its directory, beyond checkpoints: ``config.yaml`` at the start; ``encoder.pt`` (f_θ alone,
for export), ``summary.json``, TensorBoard hparams and ``report.html`` at the end.

They all carry the same metrics dict the caller gets back in :class:`training.train.TrainResult`, so the CLI's line,
the export manifest, TensorBoard and the run directory never disagree.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.contract.atomic import atomic_write_json
from serving.contract.machine import cpu_info
from serving.contract.sources import ImageSet
from training.artifact import save_encoder
from training.budget import TimeBudget
from training.config_file import CONFIG_FILE, save_config, to_yaml
from training.errors import RunFailed
from training.monitor import KnnMonitor
from training.state import TrainState
from training.steplog import VIEW_PAIRS, StepLogger, log_view_pairs, open_writer

log = logging.getLogger(__name__)


def start_run(out_dir: Path, state: TrainState, data: Any) -> Any:
    """Rank 0 at the start of every session: ``config.yaml`` (the config this run really runs, a resumed one's
    included), the TensorBoard writer, and a picture of the views at the session's first step. Returns the writer."""
    try:
        save_config(state.cfg, out_dir / CONFIG_FILE, precision_note(state.precision))
    except ImportError as exc:  # PyYAML comes with the base install (via BentoML); a bare torch box may lack it
        log.warning("no %s: %s (pip install pyyaml)", CONFIG_FILE, exc)
    writer = open_writer(out_dir / state.cfg.train.log_dir, state.step)
    images = preview_images(state, data)
    if images is not None:
        log_view_pairs(writer, state.augment, images, state.step, state.cfg.train.seed)
    return writer


def precision_note(precision: dict) -> str:
    """The comment ``config.yaml`` carries when ``auto`` chose the precision: what was measured, and how to have
    it measured again on another machine (the file itself says what this run ran)."""
    if not precision.get("images_per_s"):
        return ""
    speeds = ", ".join(f"{k} {v:,.0f} img/s" for k, v in precision["images_per_s"].items())
    asked = ", ".join(f"{k}: {v}" for k, v in precision.get("asked", {}).items())
    return (f"train.precision / train.channels_last were measured here ({asked} → {precision['precision']}, "
            f"channels_last {str(precision['channels_last']).lower()}): {speeds}.\n"
            f"On another machine set them back to auto to measure again (--set train.precision=auto "
            f"--set train.channels_last=auto).")


def preview_images(state: TrainState, data: Any) -> np.ndarray | None:
    """A few training images for the view picture: in memory, or (streamed folder) crops decoded from the first
    files by the batcher's own dataset, which is deterministic per (epoch, index) and draws no RNG."""
    if isinstance(data, ImageSet):
        return data.images[:VIEW_PAIRS]
    dataset = getattr(state.batcher, "dataset", None)
    if dataset is None:
        return None
    crops = [dataset[(0, i)] for i in range(min(VIEW_PAIRS, len(dataset)))]
    good = [views.numpy() for views, _, ok in crops if ok]
    return np.stack(good) if good else None


def run_metrics(state: TrainState, stopped: str, logger: StepLogger, budget: TimeBudget, start_step: int,
                loop_seconds: float | None = None) -> dict:
    """Where the run ended and why (``stopped``: done, stop_after, time_budget, diverged or collapsed), its last
    checked loss and embedding std, and its speed over this session's steps (``start_step``: where this session
    began; ``loop_seconds``: the steps' own time, default the session's)."""
    return {"steps": state.step, "total_steps": state.total_steps, "stopped": stopped,
            "precision": state.precision,
            "final_loss": logger.last_loss, "embedding_std": logger.last_std,
            "train_minutes": round(budget.elapsed() / 60, 2),
            "images_per_s": round((state.step - start_step) * state.cfg.train.batch_size
                                  / max(1e-9, loop_seconds or budget.run_seconds()), 1)}


def write_failure(out_dir: Path, state: TrainState, exc: RunFailed, metrics: dict, writer: Any) -> None:
    """A run that diverged or collapsed: ``summary.json`` saying where and why (what ``byol export`` and the retrain
    gates read), and no ``encoder.pt`` — the last periodic checkpoint, before the failure, is left to resume from
    with other settings."""
    metrics.update(error=str(exc), failed_at_step=exc.step)
    atomic_write_json(out_dir / "summary.json", {"metrics": metrics, "history": state.history,
                                                 "config": state.cfg.to_dict(), "machine": cpu_info()})
    if writer is not None:
        writer.close()


def write_artifacts(out_dir: Path, enc_path: Path, ckpt_path: Path, state: TrainState, data: ImageSet,
                    metrics: dict, monitor: KnnMonitor, init_from: Path | None, started_at: float | None = None
                    ) -> None:
    """Final holdout kNN (added to ``metrics``), then ``encoder.pt``, ``summary.json``, the hparams and
    ``report.html``. The data fingerprint lets the retrain gate tell which images an encoder has seen.
    ``metrics["seconds"]`` gets ``final`` (the end's own work: the last kNN, the files) and ``total`` since
    ``started_at``: where the user's wall clock went."""
    t_final = time.time()
    encoder = state.online.branch.encoder
    if monitor.enabled:
        metrics["holdout_knn"] = monitor.measure(state.step, encoder)
    fingerprint, cfg = data.fingerprint(), state.cfg.to_dict()
    seconds = metrics.setdefault("seconds", {})
    seconds["final"] = round(time.time() - t_final, 1)  # + the files below: well under a second
    if started_at is not None:
        seconds["total"] = round(time.time() - started_at, 1)
    save_encoder(enc_path, encoder, meta={
        "config": cfg, "data_fingerprint": fingerprint, "metrics": metrics,
        "checkpoint": str(ckpt_path), "parent_version": None,
        "init_from": str(init_from) if init_from else None,
    })
    summary = {"metrics": metrics, "history": state.history, "data_fingerprint": fingerprint, "n_images": len(data),
               "config": cfg, "machine": cpu_info()}
    atomic_write_json(out_dir / "summary.json", summary)
    if monitor.writer is not None:
        log_hparams(monitor.writer, cfg, metrics, state.step)
        monitor.writer.flush()  # the report reads the curves back from the event files
    try:
        from training.report import write_report

        write_report(out_dir, out_dir / state.cfg.train.log_dir, summary, monitor.last_grid, to_yaml(state.cfg))
    except ImportError as exc:  # matplotlib is in the train extra; a bare install still gets its encoder
        log.warning("no report.html: %s (pip install matplotlib)", exc)


def flat_hparams(cfg: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """The config tree as TensorBoard hparams: dotted keys, scalar values (tuples and None as text)."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, bool | int | float | str) else str(value)
    return out


def log_hparams(writer: Any, cfg: dict, metrics: dict, step: int) -> None:
    """The flattened config and the final numeric metrics (``hparam/<name>``) into the run's own event file, so
    TensorBoard's HPARAMS tab lines runs up by their settings (``SummaryWriter.add_hparams`` would start a
    separate run directory for them)."""
    from torch.utils.tensorboard.summary import hparams

    scores = {f"hparam/{k}": float(v) for k, v in metrics.items()
              if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
    for summary in hparams(flat_hparams(cfg), scores):
        writer.file_writer.add_summary(summary, step)
    for name, value in scores.items():
        writer.add_scalar(name, value, step)
