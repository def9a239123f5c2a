"""``byol eval``'s baselines are scored once per data and architecture: raw pixels depend on the splits and the
protocol only, the random-init twin also on the encoder's architecture — never on the trained weights."""

from __future__ import annotations

import pytest

from tests.conftest import tiny_encoder

SUBSET = dict(max_train=300, max_test=100)
BOTH_COMPUTED = {"random_init": "computed", "raw_pixels": "computed"}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A BYOL_HOME of its own for each test: an empty baseline cache."""
    monkeypatch.setenv("BYOL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, str]:
    """``encoder.pt`` files: two trained stand-ins of one architecture (different weights) and one of another."""
    from training.artifact import save_encoder
    from training.networks import EncoderConfig, build_encoder

    out = tmp_path_factory.mktemp("encoders")
    narrow = EncoderConfig(**{**tiny_encoder().cfg.to_dict(), "width": 4})
    files = {"a": tiny_encoder(seed=1), "b": tiny_encoder(seed=2), "narrow": build_encoder(narrow).eval()}
    return {name: str(save_encoder(out / f"{name}.pt", enc)) for name, enc in files.items()}


def run(encoder: str, fmnist_root, **overrides) -> dict:
    from clients.workflows.evaluation import EvalConfig, evaluate

    return evaluate(EvalConfig(encoder=encoder, data_root=str(fmnist_root), device="cpu",
                               **{**SUBSET, **overrides}))


def test_another_trained_encoder_reuses_both_baselines_with_identical_numbers(encoders, fmnist_root):
    first, second = run(encoders["a"], fmnist_root), run(encoders["b"], fmnist_root)
    assert first["settings"]["baselines"] == BOTH_COMPUTED
    assert second["settings"]["baselines"] == {"random_init": "cached", "raw_pixels": "cached"}
    assert second["random_init"] == first["random_init"] and second["raw_pixels"] == first["raw_pixels"]
    assert first["trained"]["probe_iterations"] > 0 and "probe" in second["raw_pixels"]


def test_cached_baselines_equal_scoring_them_again(encoders, fmnist_root):
    cached = (run(encoders["a"], fmnist_root), run(encoders["b"], fmnist_root))[1]
    fresh = run(encoders["b"], fmnist_root, cache=False)
    assert set(cached["settings"]["baselines"].values()) == {"cached"}
    assert fresh["settings"]["baselines"] == BOTH_COMPUTED
    assert {k: fresh[k] for k in ("trained", "random_init", "raw_pixels")} == {
        k: cached[k] for k in ("trained", "random_init", "raw_pixels")}


def test_another_architecture_recomputes_random_init_but_reuses_raw_pixels(encoders, fmnist_root):
    first, other = run(encoders["a"], fmnist_root), run(encoders["narrow"], fmnist_root)
    assert other["settings"]["baselines"] == {"random_init": "computed", "raw_pixels": "cached"}
    assert other["raw_pixels"] == first["raw_pixels"]
    assert other["random_init"]["dim"] != first["random_init"]["dim"]  # width 4, not 8: its own baseline


@pytest.mark.parametrize("change", [dict(max_test=120), dict(max_train=250), dict(probe=False), dict(k=10)])
def test_other_images_or_settings_recompute_both(encoders, fmnist_root, change):
    run(encoders["a"], fmnist_root)
    assert run(encoders["a"], fmnist_root, **change)["settings"]["baselines"] == BOTH_COMPUTED


@pytest.mark.parametrize("damage", ["{torn", "", "[]", '{"identity": {}, "scores": {"knn": 1.0}}', None])
def test_a_damaged_cache_file_is_recomputed_not_an_error(encoders, fmnist_root, home, damage):
    from clients.workflows.evaluation import baselines_dir

    first = run(encoders["a"], fmnist_root)
    files = sorted(baselines_dir().glob("*.json"))
    assert len(files) == 2
    for f in files:
        if damage is None:  # a directory where the file was: unreadable
            f.unlink()
            f.mkdir()
        else:
            f.write_text(damage)
    again = run(encoders["a"], fmnist_root)
    assert again["settings"]["baselines"] == BOTH_COMPUTED
    assert again["random_init"] == first["random_init"] and again["raw_pixels"] == first["raw_pixels"]


def test_only_the_trained_encoders_classifiers_are_kept(encoders, fmnist_root):
    from clients.workflows.evaluation import EvalConfig, evaluate

    cfg = EvalConfig(encoder=encoders["a"], data_root=str(fmnist_root), device="cpu", **SUBSET)
    kept: dict = {}
    for _ in range(2):  # computed, then cached: the same classifiers either way
        kept.clear()
        report = evaluate(cfg, kept)
        assert set(kept) == {"trained"} and kept["trained"].as_dict() == report["trained"]


def test_the_probe_reports_kNN_floor_is_the_cached_raw_pixel_baseline(encoders, fmnist_root, monkeypatch):
    """``byol probe fit`` prints the raw-pixel kNN beside its probe: after ``byol eval`` it is read, not scored."""
    from clients.workflows import evaluation
    from clients.workflows.evaluation import ProbeConfig, raw_pixel_knn

    cfg = ProbeConfig(data_root=str(fmnist_root), **SUBSET)
    train, test = cfg.splits(28)
    classes = [str(i) for i in range(10)]
    fresh = raw_pixel_knn(cfg, train, test, classes)
    evaluated = run(encoders["a"], fmnist_root)
    monkeypatch.setattr(evaluation.metrics, "score", lambda *a, **k: pytest.fail("scored again"))
    reused = raw_pixel_knn(cfg, train, test, classes)
    assert reused["knn"] == fresh["knn"] == evaluated["raw_pixels"]["knn"] and "probe" not in reused
    assert reused["se"] == fresh["se"] and reused["knn_200"] == fresh["knn_200"]
