"""byol-embed under one name: ``from byol_embed import EmbeddingClient, TrainConfig, train, OnnxEncoder, ...``.

The code lives in the card's four top-level packages — ``training`` (BYOL, torch), ``serving`` (the BentoML API and
its torch-free contract), ``index`` (FAISS), ``clients`` (HTTP client, CLI, workflows) — and every module imports
them by those names, as BentoML does (``serving.service:ByolEmbed``). This package is the project's public
namespace over them: each name below is imported from its home only when first used, so ``import byol_embed`` is
instant and a serving box without torch can ``from byol_embed import EmbeddingClient`` without pulling training in.

Those top-level names are generic. Before the first import through this namespace, :func:`check_packages` makes
sure each of them is byol-embed's own (installed beside this package, with its characteristic module): another
project's ``index`` or ``training`` earlier on ``sys.path`` raises an ``ImportError`` that names the culprit instead
of failing later with an unrelated ``AttributeError``. Install byol-embed in its own virtual environment: pip does not
stop two distributions from writing the same top-level package.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

# public name → (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    # talking to a running server (no torch, no BentoML)
    "EmbeddingClient": ("clients.client", "EmbeddingClient"),
    "AsyncEmbeddingClient": ("clients.client", "AsyncEmbeddingClient"),
    "ClientError": ("clients.client", "ClientError"),
    # training (torch)
    "TrainConfig": ("training.config", "TrainConfig"),
    "PRESETS": ("training.config", "PRESETS"),
    "preset": ("training.config", "preset"),
    "apply_overrides": ("training.config", "apply_overrides"),
    "load_config": ("training.config_file", "load_config"),
    "save_config": ("training.config_file", "save_config"),
    "train": ("training.train", "train"),
    "TrainResult": ("training.train", "TrainResult"),
    "export_bundle": ("training.export", "export_bundle"),
    # serving's torch-free contract: an exported bundle as an embedding function
    "OnnxEncoder": ("serving.contract.encoder", "OnnxEncoder"),
    "load_image": ("serving.contract.image", "load"),
    # FAISS
    "VectorIndex": ("index.vector_index", "VectorIndex"),
    "DurableIndex": ("index.durable", "DurableIndex"),
    # a real server as a child process (tests, notebooks, benchmarks)
    "start_server": ("clients.local_server", "start"),
}

# Each top-level package of byol-embed and a module only byol-embed's has: how an impostor is told apart.
PACKAGES: dict[str, str] = {"training": "byol.py", "serving": "served.py", "index": "vector_index.py",
                            "clients": "local_server.py"}

__all__ = sorted([*_EXPORTS, "__version__", "check_packages"])

_checked: set[str] = set()


def check_packages(names: tuple[str, ...] = tuple(PACKAGES)) -> None:
    """Raise ``ImportError`` unless each top-level package in ``names`` is byol-embed's own, i.e. sits beside this
    package and holds its characteristic module. Looks the packages up without importing them."""
    home = Path(__file__).resolve().parent.parent
    for name in names:
        if name in _checked:
            continue
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin is None or origin.name != "__init__.py" or origin.parent.parent != home \
                or not (origin.parent / PACKAGES[name]).is_file():
            raise ImportError(
                f"byol_embed: the top-level package {name!r} is not byol-embed's: it resolves to "
                f"{origin or 'nothing'} instead of {home / name}. Another project's {name!r} shadows it on sys.path "
                f"(or was installed over it); install byol-embed in a virtual environment of its own.")
        _checked.add(name)


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("byol-embed")
        except PackageNotFoundError:
            return "0+unknown"
    if name in PACKAGES:  # byol_embed.training, byol_embed.index, ...: the packages themselves
        check_packages((name,))
        return importlib.import_module(name)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'byol_embed' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    check_packages((module.split(".")[0],))
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
