"""The bundle format: ``encoder.onnx`` + ``manifest.json``, self-describing and torch-free.

Export (training side) writes it, serving and index read it; both import this module so the format cannot drift.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

from serving.contract.atomic import now_iso

FORMAT_VERSION = 1
ONNX_FILE = "encoder.onnx"
MANIFEST_FILE = "manifest.json"
MODEL_NAME = "byol-encoder"  # name in the BentoML model store; the tag's version is the bundle version


class BundleError(ValueError):
    """A bundle is missing, corrupt or does not match what the caller expects."""


@dataclass
class Manifest:
    """What a consumer needs to use ``encoder.onnx`` without torch or the training code.

    The ONNX input is uint8 ``[N, input_size, input_size, 3]`` (RGB, NHWC, from :func:`serving.contract.image.load`);
    the output float32 ``[N, embedding_dim]``, L2-normalised when ``normalized`` is true.
    """

    version: str
    embedding_dim: int
    input_size: int
    architecture: dict
    onnx_sha256: str
    normalized: bool = True
    opset: int = 0
    training_config: dict = field(default_factory=dict)
    data_fingerprint: str = ""
    parent_version: str | None = None
    metrics: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)
    extra_files: dict = field(default_factory=dict)  # name → sha256 of further graphs (encoder_fp16.onnx)
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    onnx_file: str = ONNX_FILE

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> Manifest:
        known = {f.name for f in fields(cls)}
        missing = [n for n in ("version", "embedding_dim", "input_size", "architecture", "onnx_sha256")
                   if n not in obj]
        if missing:
            raise BundleError(f"manifest lacks required field(s): {', '.join(missing)}")
        if obj.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise BundleError(
                f"bundle format {obj['format_version']} is newer than this byol-embed reads ({FORMAT_VERSION})"
            )
        return cls(**{k: v for k, v in obj.items() if k in known})


def new_version(onnx_bytes: bytes) -> str:
    """Sortable and unique: UTC time + content hash, valid as a BentoML tag version."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{hashlib.sha256(onnx_bytes).hexdigest()[:8]}"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(directory: str | os.PathLike, onnx_bytes: bytes, manifest: Manifest) -> Path:
    """Write both files into an existing (normally temporary) directory; the caller publishes it atomically."""
    directory = Path(directory)
    manifest.onnx_sha256 = hashlib.sha256(onnx_bytes).hexdigest()
    if not manifest.created_at:
        manifest.created_at = now_iso()
    (directory / manifest.onnx_file).write_bytes(onnx_bytes)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
    return directory


def read_bundle(directory: str | os.PathLike, verify_hash: bool = True) -> tuple[Path, Manifest]:
    """Return ``(onnx_path, manifest)``, or raise :class:`BundleError` naming what is wrong."""
    directory = Path(directory)
    mpath = directory / MANIFEST_FILE
    if not mpath.is_file():
        raise BundleError(f"bundle {directory}: {MANIFEST_FILE} is missing")
    try:
        manifest = Manifest.from_json(json.loads(mpath.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise BundleError(f"bundle {directory}: {MANIFEST_FILE} is not valid: {exc}") from None
    onnx_path = directory / manifest.onnx_file
    if not onnx_path.is_file():
        raise BundleError(f"bundle {directory}: {manifest.onnx_file} is missing")
    if verify_hash and sha256_file(onnx_path) != manifest.onnx_sha256:
        raise BundleError(f"bundle {directory}: {manifest.onnx_file} does not match its manifest hash (corrupt?)")
    for name, digest in manifest.extra_files.items():
        if not (directory / name).is_file():
            raise BundleError(f"bundle {directory}: {name} is missing")
        if verify_hash and sha256_file(directory / name) != digest:
            raise BundleError(f"bundle {directory}: {name} does not match its manifest hash (corrupt?)")
    if int(manifest.embedding_dim) <= 0 or int(manifest.input_size) <= 0:
        raise BundleError(f"bundle {directory}: bad embedding_dim/input_size in manifest")
    return onnx_path, manifest
