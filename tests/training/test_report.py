"""What a run shows: TensorBoard pictures (views, neighbours) and hparams, ``config.yaml``, and ``report.html``."""

import base64
import io
import re
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from tests.training.test_train_smoke import TINY, _labelled
from training.config import apply_overrides, preset
from training.config_file import load_config
from training.pictures import MIN_TILE, tile
from training.report import KNN_COLOR, LOSS_COLOR, curves, render
from training.train import train

STEPS = 4  # TINY: 4 steps, kNN every 2, log every step


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pictured")
    cfg = apply_overrides(preset("fmnist-demo"), TINY)
    res = train(cfg, out, data=_labelled(), holdout=_labelled(32))
    return cfg, res, out


@pytest.fixture(scope="module")
def events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run[2] / "tb"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _tile_px(side: int = 28, pad: int = 2, gap: int = 4) -> int:
    return side * -(-MIN_TILE // side) + 2 * pad + gap


def _png_size(encoded: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(encoded)).size


def test_tensorboard_gets_the_views_at_the_start(events):
    views = events.Images("augment/views")
    assert [e.step for e in views] == [0]
    # three rows (image, T, T') of 8 images, each 28 px enlarged to MIN_TILE
    assert (views[0].width, views[0].height) == (8 * _tile_px() + 4, 3 * _tile_px() + 4)


def test_tensorboard_gets_a_neighbour_grid_at_each_knn_evaluation(events):
    grids = events.Images("monitor/neighbours")
    assert {e.step for e in grids} == {2, STEPS}
    assert all((e.width, e.height) == (7 * _tile_px() + 4, 6 * _tile_px() + 4) for e in grids)  # query + 6, 6 rows
    pixels = np.asarray(Image.open(io.BytesIO(grids[-1].encoded_image_string)).convert("RGB"))
    assert pixels.std() > 10  # real thumbnails, not an empty canvas


def test_tensorboard_gets_hparams_of_the_config_and_the_final_metrics(run, events):
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg, res, _ = run
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["optim.lr_base"].number_value == cfg.optim.lr_base
    assert hp["encoder.arch"].string_value == cfg.encoder.arch
    assert hp["augment.view1.crop_scale"].string_value == str(cfg.augment.view1.crop_scale)
    knn = events.Scalars("hparam/holdout_knn")
    assert [(e.step, e.value) for e in knn] == [(STEPS, pytest.approx(res.metrics["holdout_knn"]))]


def test_the_run_directory_keeps_its_resolved_config(run):
    """What ran: the caller's config with the measured precision in place of ``auto``, and a comment on it."""
    cfg, res, out = run
    chosen = res.metrics["precision"]
    assert cfg.train.precision == "auto" and chosen["asked"]["precision"] == "auto" and chosen["images_per_s"]
    ran = replace(cfg, train=replace(cfg.train, precision=chosen["precision"], channels_last=chosen["channels_last"]))
    assert load_config(out / "config.yaml") == ran
    assert "were measured here" in (out / "config.yaml").read_text()


def _report_images(page: str) -> dict[str, np.ndarray]:
    found = re.findall(r'<img id="([\w-]+)" alt="[^"]*" src="data:image/png;base64,([^"]+)">', page)
    return {i: np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for i, b in found}


def _pixels_of(image: np.ndarray, hex_color: str, tol: int = 40) -> int:
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image.astype(int) - rgb).sum(axis=-1) < tol).sum())


def test_the_report_draws_the_loss_and_knn_curves_and_the_neighbours(run):
    _, res, out = run
    page = (out / "report.html").read_text()
    images = _report_images(page)
    assert {"loss-curve", "knn-curve", "neighbours"} <= set(images)
    assert _pixels_of(images["loss-curve"], LOSS_COLOR) > 100  # the line itself, not just the axes
    assert _pixels_of(images["knn-curve"], KNN_COLOR) > 100
    assert _pixels_of(images["knn-curve"], LOSS_COLOR) == 0  # the colour test tells the curves apart
    assert images["neighbours"].shape[:2] == (6 * _tile_px() + 4, 7 * _tile_px() + 4)
    assert f"{res.metrics['holdout_knn']}" in page and "lr_base: 2.0" in page


def test_report_curves_come_from_the_events_and_the_history(run, tmp_path):
    _, res, out = run
    import json

    summary = json.loads((out / "summary.json").read_text())
    from_events = curves(out / "tb", summary)
    assert [s for s, _ in from_events["train/loss"]] == list(range(1, STEPS + 1))
    assert [s for s, _ in from_events["monitor/knn_accuracy"]] == [2, STEPS]
    from_history = curves(tmp_path / "no-events", summary)  # no event files: the loss at the kNN steps
    assert [s for s, _ in from_history["train/loss"]] == [2, STEPS]


def test_a_report_without_a_labelled_holdout_says_so():
    page = render("r", {"metrics": {"steps": 3}}, {"train/loss": [(1, 4.0), (2, 3.5), (3, 3.0)]}, None, "x: 1")
    assert set(_report_images(page)) == {"loss-curve"} and "kNN monitor off" in page


def test_tiles_are_enlarged_and_framed():
    red = np.zeros((10, 10, 3), np.uint8)
    out = tile([[red, red], [red]], [[(0, 255, 0), (0, 255, 0)], [(255, 0, 0)]], pad=2, gap=4)
    side = 10 * -(-MIN_TILE // 10) + 4
    assert out.shape == (2 * (side + 4) + 4, 2 * (side + 4) + 4, 3)
    assert tuple(out[4, 4]) == (0, 255, 0) and tuple(out[4 + side + 4, 4]) == (255, 0, 0)
    assert tuple(out[-5, -5]) == (255, 255, 255)  # the missing cell of the short row stays blank
