"""``byol demo``: the main job on the embedded default (Fashion-MNIST), end to end, ending with a live server.

train → eval (vs raw pixels and random init) → export (ONNX + parity) → index the collection → fit the probe →
promote → serve. Each step is the workflow the matching command runs, called directly, and prints what that
command prints.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clients import tables


@dataclass
class DemoConfig:
    out: Path = Path("runs/fmnist-demo")  # training run directory
    data_root: str | None = None  # Fashion-MNIST IDX folder (default: the Debian package's)
    host: str = "127.0.0.1"
    port: int = 3000
    retrain: bool = False  # train again even if the run already has an encoder
    serve: bool = True  # end with `byol serve` in the foreground


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> int:
    """Every step in order; returns when promoted (``serve=False``) or never (the server takes the process)."""
    from clients.workflows import evaluation, exporting, indexing, release
    from clients.workflows.serve import ServeConfig, serve
    from serving.contract.atomic import atomic_write_json

    started, seconds = time.monotonic(), {}

    def step(title: str, run: Callable[[], object], table: Callable[[object], str]) -> object:
        say(f"\n==> {title}")
        t0 = time.monotonic()
        result = run()
        say(table(result))
        seconds[title] = round(time.monotonic() - t0, 1)
        say(f"    ({title}: {seconds[title]:.0f} s)")
        return result

    encoder = cfg.out / "encoder.pt"
    if cfg.retrain or not encoder.is_file():
        step("train", lambda: _train(cfg), tables.training)
    else:
        say(f"==> train: {encoder} exists (use --retrain to train again)")
    fitted: dict = {}  # the eval's classifiers: the probe step starts from the trained encoder's probe
    report = step("eval", lambda: evaluation.evaluate(evaluation.EvalConfig(encoder=str(encoder),
                                                                            data_root=cfg.data_root), fitted),
                  tables.evaluation)
    atomic_write_json(cfg.out / "eval.json", report)  # export carries it into the manifest's metrics
    exported = step("export", lambda: exporting.export(exporting.ExportConfig(
        encoder=encoder, parity_data="fashion-mnist", data_root=cfg.data_root)), tables.export)
    version = exported["manifest"].version
    step("index", lambda: indexing.build(indexing.BuildConfig(model=version, data_root=cfg.data_root)),
         tables.index_build)
    warm = getattr(fitted.get("trained"), "probe_model", None)
    probe = step("probe", lambda: evaluation.fit_probe(evaluation.ProbeConfig(
        model=version, data_root=cfg.data_root, warm_start=warm)), tables.probe)
    step("promote", lambda: release.promote(version), lambda r: tables.release(r, "promote"))
    from serving.contract.machine import cpu_info

    atomic_write_json(cfg.out / "demo_report.json", {  # what README's "Measured" quotes (bench/results/demo_quality)
        "version": version, "machine": cpu_info(), "seconds": seconds,
        "seconds_until_serving": round(time.monotonic() - started, 1),
        "eval": report, "probe": {k: probe[k] for k in ("accuracy", "evaluation", "n_train", "n_test")}})
    if not cfg.serve:
        return 0
    token = os.environ.get("BYOL_ADMIN_TOKEN") or secrets.token_urlsafe(16)
    os.environ["BYOL_ADMIN_TOKEN"] = token
    url = f"http://{cfg.host}:{cfg.port}"
    say(f"\n==> serving bundle {version} at {url}  (admin token for /index/add, /index/remove, /admin/reload: "
        f"{token})\n"
        f"    .venv/bin/byol sample-image shirt.png\n"
        f"    curl -s -F image=@shirt.png {url}/embed\n"
        f"    curl -s -F image=@shirt.png -F k=5 {url}/search\n"
        f"    open {url}/ui in a browser (the API's documentation: {url}/)\n")
    return serve(ServeConfig(model=version, host=cfg.host, port=cfg.port))


def _train(cfg: DemoConfig):
    from training.config import apply_overrides, preset
    from training.train import train

    overrides = ["data.source=fashion-mnist"] + ([f"data.data_root={cfg.data_root}"] if cfg.data_root else [])
    return train(apply_overrides(preset("fmnist-demo"), overrides), cfg.out)
