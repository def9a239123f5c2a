"""Where byol-embed keeps its state. One root (``BYOL_HOME``, default ``~/.byol``) so a deployment is one folder.

    $BYOL_HOME/
      bentoml/                  BentoML model store (unless BENTOML_HOME is set): bundles, one version each
      indexes/<version>/        the FAISS index built with bundle <version> (never mixed with another)
      probes/<version>/         linear probe + kNN labels fitted on bundle <version>'s embeddings
      collection/               the stored collection (images added over HTTP, URIs of indexed files; roots.json
                                maps each indexed folder's name to where it lives, so URIs stay relative)
      checkpoints/<version>.pt  the training state behind each bundle (retrain resumes it)
      reports/<version>.json    the evaluation-gate report of each retrained candidate
      retrain/                  retrain runs, lock, and the images already used
      release.json              which version is served, and the ones before it (rollback)
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("BYOL_HOME") or Path.home() / ".byol").expanduser()


def bentoml_home() -> Path:
    """BentoML's store location; set ``BENTOML_HOME`` before bentoml is imported (see :func:`use_store`)."""
    return Path(os.environ.get("BENTOML_HOME") or home() / "bentoml")


def use_store() -> Path:
    """Point BentoML at our store unless the user chose one; call before ``import bentoml``."""
    os.environ.setdefault("BENTOML_HOME", str(home() / "bentoml"))
    return Path(os.environ["BENTOML_HOME"])


def index_dir(version: str) -> Path:
    return home() / "indexes" / version


def probe_dir(version: str) -> Path:
    return home() / "probes" / version


def collection_dir() -> Path:
    return home() / "collection"


def release_file() -> Path:
    return home() / "release.json"


def checkpoint_file(version: str) -> Path:
    """The full BYOL training state behind bundle ``version`` (online, target, optimizer): what retrain resumes."""
    return home() / "checkpoints" / f"{version}.pt"


def reports_dir() -> Path:
    return home() / "reports"


def retrain_dir() -> Path:
    """Retrain runs, the lock, and the record of which new images were already used."""
    return home() / "retrain"
