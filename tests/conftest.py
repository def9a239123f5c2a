"""Shared fixtures. Every test session gets its own BYOL_HOME / BENTOML_HOME (set before bentoml is imported)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Before anything imports torch: OpenMP threads that busy-wait between ops starve the other process of a 2-core
# box (server + test client, two DDP ranks); measured 1.84 s vs 0.043 s for a tiny resnet step under load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="byol-test-home-"))
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
os.environ["BYOL_HOME"] = str(_SESSION_HOME)
os.environ["BENTOML_HOME"] = str(_SESSION_HOME / "bentoml")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
ODD_IMAGES = SHARED / "data" / "odd-images"


@pytest.fixture(scope="session")
def byol_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def fmnist_root() -> Path:
    if not (FMNIST_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return FMNIST_ROOT


@pytest.fixture(scope="session")
def odd_images() -> Path:
    """The 64 odd/broken files of ../shared (tests only; skipped cleanly when absent)."""
    if not (ODD_IMAGES / "MANIFEST.tsv").is_file():
        pytest.skip("../shared/data/odd-images not present")
    return ODD_IMAGES


@pytest.fixture(scope="session")
def fmnist_test(fmnist_root):
    from serving.contract.sources import load_fashion_mnist

    return load_fashion_mnist(fmnist_root, "test")


def tiny_encoder(seed: int = 0):
    """A random-init f of the demo's shape, shrunk: enough for contract tests, fast on 2 cores."""
    import torch

    from training.networks import EncoderConfig, build_encoder

    torch.manual_seed(seed)
    cfg = EncoderConfig(arch="resnet10", stem="small-s2", width=8, input_size=28,
                        mean=(0.286, 0.286, 0.286), std=(0.353, 0.353, 0.353))
    return build_encoder(cfg).eval()


def sample_images(n: int = 16, size: int = 28, seed: int = 0) -> np.ndarray:
    """Fashion-MNIST test images when installed, else deterministic noise (uint8 [n, size, size, 3])."""
    try:
        from serving.contract.sources import load_fashion_mnist

        return load_fashion_mnist(FMNIST_ROOT, "test").images[:n]
    except Exception:
        return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def make_bundle(out_dir: Path, seed: int = 0, parent_version: str | None = None) -> Path:
    from training.export import export_bundle

    export_bundle(tiny_encoder(seed), out_dir, meta={"note": "test bundle, random init"},
                  parity_images=sample_images(), parent_version=parent_version)
    return out_dir


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A real exported bundle (random-init tiny encoder) on disk."""
    return make_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def registered_bundle(tiny_bundle) -> str:
    """``tiny_bundle`` registered in the session's BentoML model store; returns its tag."""
    from serving.store import register_bundle

    return register_bundle(tiny_bundle)
