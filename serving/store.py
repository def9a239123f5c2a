"""Bundles in the BentoML model store: one model ``byol-encoder``, one store version per bundle version.

The store is where ``byol serve`` and retraining find encoders by tag; the files inside each store entry are
the bundle itself (``encoder.onnx`` + ``manifest.json``), so :func:`serving.contract.bundle.read_bundle` reads them.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from serving.contract.bundle import MANIFEST_FILE, MODEL_NAME, BundleError, Manifest, read_bundle
from serving.paths import use_store

log = logging.getLogger(__name__)


def _bentoml():
    """Import bentoml only after BENTOML_HOME points at our store (and only when the store is used)."""
    use_store()
    import bentoml

    return bentoml


def _tag_for(tag: str) -> str:
    """``latest`` / ``<version>`` / ``byol-encoder:<version>`` → a full tag (``latest`` kept symbolic)."""
    tag = (tag or "").strip() or "latest"
    if ":" in tag:
        name, _, version = tag.partition(":")
        if name != MODEL_NAME:
            raise BundleError(f"not a byol-embed encoder tag: {tag!r} (expected '{MODEL_NAME}:<version>')")
        return f"{MODEL_NAME}:{version or 'latest'}"
    return f"{MODEL_NAME}:{tag}"


def store_home() -> Path:
    """The BentoML home this process really uses (fixed at bentoml's first import, whatever the env says now)."""
    _bentoml()
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get())


def _missing(tag: str) -> BundleError:
    return BundleError(f"no bundle '{tag}' in the model store at {store_home()}; run 'byol export' first")


def register_bundle(bundle_dir: str | os.PathLike) -> str:
    """Copy a verified bundle into the store; returns ``byol-encoder:<version>``. Registering again is a no-op."""
    bundle_dir = Path(bundle_dir)
    _, manifest = read_bundle(bundle_dir)  # never store a corrupt bundle
    bentoml = _bentoml()
    from bentoml.exceptions import BentoMLException, NotFound

    tag = f"{MODEL_NAME}:{manifest.version}"
    try:
        read_bundle(bentoml.models.get(tag).path)
        log.info("%s is already in the model store", tag)
        return tag
    except NotFound:
        pass
    except (BentoMLException, BundleError) as exc:  # a registration killed half-way: replace the debris
        log.warning("replacing the incomplete store entry %s (%s)", tag, exc)
        shutil.rmtree(_entry_dir(manifest.version), ignore_errors=True)
    labels = {"embedding_dim": str(manifest.embedding_dim), "input_size": str(manifest.input_size),
              "arch": str(manifest.architecture.get("arch", "")), "parent": manifest.parent_version or ""}
    metadata = {"version": manifest.version, "created_at": manifest.created_at, "onnx_sha256": manifest.onnx_sha256,
                "embedding_dim": int(manifest.embedding_dim), "input_size": int(manifest.input_size),
                "parent_version": manifest.parent_version or ""}  # BentoML metadata takes no None
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        for f in sorted(bundle_dir.iterdir()):
            if f.is_file():
                shutil.copy2(f, model.path_of(f.name))
    log.info("registered %s from %s", tag, bundle_dir)
    return tag


def _age(model) -> tuple:
    """Sort key: the manifest's creation time, then the store's own (manifest times have 1 s resolution)."""
    return str(model.info.metadata.get("created_at", "")), model.info.creation_time


def _store_root() -> Path:
    """The model store this process really reads: BENTOML_HOME's, or a served Bento's own ``models/`` (a container
    has no BENTOML_HOME store: the Bento carries its models beside it)."""
    _bentoml()
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store.get()._path)


def _entry_dir(version: str) -> Path:
    return _store_root() / MODEL_NAME / version


def _models(bentoml) -> list:
    """Complete store entries, oldest first. BentoML copies a model into its final directory in place, so a
    registration killed half-way leaves an entry without ``model.yaml`` that would make ``models.list`` fail:
    entries are read one by one and such debris is skipped (and replaced when that version is registered again)."""
    from bentoml.exceptions import BentoMLException

    root = _store_root() / MODEL_NAME
    models = []
    for entry in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        try:
            models.append(bentoml.models.get(f"{MODEL_NAME}:{entry.name}"))
        except BentoMLException as exc:
            log.warning("skipping incomplete model store entry %s: %s", entry, exc)
    return sorted(models, key=_age)


def bundle_path(tag: str = "latest") -> Path:
    """The bundle directory of ``latest``, a version, or a full tag; raises :class:`BundleError` when absent."""
    full = _tag_for(tag)
    bentoml = _bentoml()
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        if full.endswith(":latest"):
            models = _models(bentoml)
            if not models:
                raise _missing(full)
            model = models[-1]
        else:
            model = bentoml.models.get(full)
    except NotFound:
        raise _missing(full) from None
    except BentoMLException as exc:  # e.g. a malformed version string
        raise BundleError(f"bad bundle tag {tag!r}: {exc}") from None
    path = Path(model.path)
    if not (path / MANIFEST_FILE).is_file():
        raise BundleError(f"model store entry {model.tag} holds no {MANIFEST_FILE}: not a byol-embed bundle")
    return path


def list_bundles() -> list[Manifest]:
    """Every stored bundle's manifest, oldest first."""
    manifests = []
    for m in _models(_bentoml()):
        try:
            manifests.append(read_bundle(m.path, verify_hash=False)[1])
        except BundleError as exc:
            log.warning("skipping store entry %s: %s", m.tag, exc)
    return manifests
