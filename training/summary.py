"""What a finished run leaves for the next tools: ``encoder.pt`` (f_θ alone, for export) and ``summary.json``.

Both carry the same metrics dict the caller gets back in :class:`training.train.TrainResult`, so the CLI's line,
the export manifest and the run directory never disagree.
"""

from __future__ import annotations

from pathlib import Path

from serving.contract.atomic import atomic_write_json
from serving.contract.sources import ImageSet
from training.artifact import save_encoder
from training.budget import TimeBudget
from training.monitor import KnnMonitor
from training.state import TrainState
from training.steplog import StepLogger


def run_metrics(state: TrainState, stopped: str, logger: StepLogger, budget: TimeBudget, start_step: int) -> dict:
    """Where the run ended and why (``stopped``: done, stop_after or time_budget), its last logged loss and
    embedding std, and its speed over this session's steps (``start_step``: where this session began)."""
    return {"steps": state.step, "total_steps": state.total_steps, "stopped": stopped,
            "final_loss": logger.last_loss, "embedding_std": logger.last_std,
            "train_minutes": round(budget.elapsed() / 60, 2),
            "images_per_s": round((state.step - start_step) * state.cfg.train.batch_size
                                  / max(1e-9, budget.run_seconds()), 1)}


def write_artifacts(out_dir: Path, enc_path: Path, ckpt_path: Path, state: TrainState, data: ImageSet,
                    metrics: dict, monitor: KnnMonitor, init_from: Path | None) -> None:
    """Final holdout kNN (added to ``metrics``), then ``encoder.pt`` and ``summary.json``. The data fingerprint
    lets the retrain gate tell which images an encoder has seen."""
    encoder = state.online.branch.encoder
    if monitor.enabled:
        metrics["holdout_knn"] = monitor.measure(state.step, encoder)
    fingerprint, cfg = data.fingerprint(), state.cfg.to_dict()
    save_encoder(enc_path, encoder, meta={
        "config": cfg, "data_fingerprint": fingerprint, "metrics": metrics,
        "checkpoint": str(ckpt_path), "parent_version": None,
        "init_from": str(init_from) if init_from else None,
    })
    atomic_write_json(out_dir / "summary.json", {"metrics": metrics, "history": state.history,
                                                 "data_fingerprint": fingerprint, "n_images": len(data),
                                                 "config": cfg})
