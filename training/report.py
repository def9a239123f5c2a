"""``report.html``: one self-contained page a finished run leaves in its directory — the curves and the neighbours.

TensorBoard needs a server and the run's event files; a report is one file to open, mail or attach to an issue:
the loss (and lr / τ) curves read back from the run's TensorBoard events (so a resumed run's curve covers all its
sessions), the holdout kNN curve from the run's history, the nearest-neighbour grid of the last kNN measurement,
the final metrics and the config. Pictures are inline PNGs drawn with matplotlib's Agg canvas (no display, no
pyplot state), and the page references nothing outside itself.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np

from serving.contract.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
LOSS_COLOR, KNN_COLOR, LR_COLOR, TAU_COLOR = "#1f77b4", "#d62728", "#2ca02c", "#9467bd"
SCALARS = ("train/loss", "train/lr", "train/tau", "monitor/knn_accuracy")


def read_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a TensorBoard log directory, ``{tag: [(step, value), ...]}`` ({} when unreadable)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return {}
    if not Path(tb_dir).is_dir():
        return {}
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags().get("scalars", [])}


def curves(tb_dir: Path, summary: dict) -> dict[str, list[tuple[int, float]]]:
    """The series the report plots: TensorBoard's, else (no events) the loss and kNN of ``summary["history"]``;
    kNN always from the history plus the final holdout measurement (they survive resumes in the checkpoint)."""
    series = {k: v for k, v in read_scalars(tb_dir).items() if k in SCALARS}
    history = sorted(((int(s), h) for s, h in summary.get("history", {}).items()), key=lambda x: x[0])
    if not series.get("train/loss"):
        series["train/loss"] = [(s, float(h["loss"])) for s, h in history if h.get("loss") is not None]
    knn = {s: float(h["knn"]) for s, h in history if h.get("knn") is not None}
    metrics = summary.get("metrics", {})
    if metrics.get("holdout_knn") is not None:
        knn[int(metrics["steps"])] = float(metrics["holdout_knn"])
    series["monitor/knn_accuracy"] = sorted(knn.items())
    return series


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot(series: list[tuple[int, float]], title: str, ylabel: str, color: str,
         second: tuple[list[tuple[int, float]], str, str] | None = None) -> bytes:
    """A line (markers when there are few points) as PNG bytes; ``second``: (series, label, colour) on a right axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2), dpi=100, layout="tight")
    ax = fig.add_subplot()
    steps, values = zip(*series, strict=True)
    ax.plot(steps, values, color=color, linewidth=1.8, marker="o" if len(series) <= 30 else None, markersize=4)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if second and second[0]:
        ax2 = ax.twinx()
        s2, v2 = zip(*second[0], strict=True)
        ax2.plot(s2, v2, color=second[2], linewidth=1.2, linestyle="--")
        ax2.set_ylabel(second[1], color=second[2])
    return _png(fig)


def grid_png(grid: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return buf.getvalue()


def _img(element_id: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="{element_id}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render(title: str, summary: dict, series: dict, grid: np.ndarray | None, config_yaml: str) -> str:
    """The page as HTML text (ids: ``loss-curve``, ``knn-curve``, ``schedule-curve``, ``neighbours``)."""
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Final metrics</h2>", "<table>"]
    parts += [f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
              for k, v in summary.get("metrics", {}).items()]
    parts += ["</table>", "<h2>Training loss</h2>"]
    loss = series.get("train/loss")
    parts.append(_img("loss-curve", plot(loss, "BYOL loss", "loss", LOSS_COLOR), "training loss by step")
                 if loss else "<p>no loss was logged</p>")
    parts.append("<h2>Holdout kNN accuracy</h2>")
    knn = series.get("monitor/knn_accuracy")
    parts.append(_img("knn-curve", plot(knn, "holdout kNN accuracy", "accuracy", KNN_COLOR), "kNN accuracy by step")
                 if knn else "<p>kNN monitor off: no labelled holdout (or train.knn_every = 0)</p>")
    if series.get("train/lr"):
        parts += ["<h2>Schedules</h2>", _img("schedule-curve", plot(series["train/lr"], "learning rate and τ", "lr",
                                                                     LR_COLOR, (series.get("train/tau"), "τ",
                                                                                TAU_COLOR)), "lr and tau by step")]
    if grid is not None:
        parts += ["<h2>Nearest neighbours at the last kNN evaluation</h2>",
                  "<p>each row: a holdout image (grey frame), then its nearest training references, framed green "
                  "when their label matches, red otherwise</p>", _img("neighbours", grid_png(grid), "neighbours")]
    parts += ["<h2>Config</h2>", f"<pre>{html.escape(config_yaml)}</pre>"]
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
             "th{text-align:left;padding-right:1em;font-weight:normal;color:#555}img{max-width:100%}"
             "pre{background:#f6f6f6;padding:1em;font-size:0.85em}")
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(out_dir: Path, tb_dir: Path, summary: dict, grid: np.ndarray | None, config_yaml: str) -> Path:
    """Write ``<out_dir>/report.html`` (atomically) from the run's events, ``summary`` (as in ``summary.json``),
    the last neighbour grid and the config's YAML; returns its path."""
    page = render(f"byol-embed run {Path(out_dir).resolve().name}", summary, curves(tb_dir, summary), grid,
                  config_yaml)
    path = atomic_write_bytes(Path(out_dir) / REPORT_FILE, page.encode("utf-8"))
    log.info("run report written to %s", path)
    return path
