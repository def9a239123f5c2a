"""Images → vectors → FAISS index (``byol index build|add``), and looking things up in it (``byol search``).

A build is three stages, each testable alone (clip-retrieval style):
  reader  (``serving.contract.sources``: a data set, a folder or the stored collection → ``ImageSet``),
  encoder (:func:`embed_chunks`: ONNX Runtime in batches, one ``.npy`` per chunk under a *partial* directory keyed
           by model version + data, so a rerun after a kill skips the finished chunks),
  writer  (``index.writes.publish``: items recorded in the collection, the index published complete or not at all).
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index import writes
from index.collection import Collection
from index.durable import DurableIndex
from index.errors import IndexStoreError
from index.vector_index import VectorIndex
from serving import paths
from serving.contract.atomic import atomic_write, atomic_write_bytes
from serving.contract.encoder import OnnxEncoder
from serving.contract.image import ImageError, load
from serving.contract.sources import (
    ImageSet,
    SourceError,
    iter_image_files,
    load_source,
    read_files,
    read_items,
    read_uri,
)

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 4096


def open_encoder(tag: str) -> OnnxEncoder:
    """Model tag (``latest``, a version, ``byol-encoder:<v>``) → encoder, through the BentoML model store."""
    from serving.store import bundle_path

    return OnnxEncoder(bundle_path(tag))


def collection() -> Collection:
    return Collection(paths.collection_dir())


# ---------------------------------------------------------------------------------------------- stages
def read_images(data: str, split: str, size: int, data_root: str | None = None, limit: int | None = None,
                labels_from_dirs: bool = False) -> ImageSet:
    """Reader stage: any supported source at the model's input size, optionally the first ``limit`` items."""
    images = load_source(data, split, size=size, data_root=data_root, labels_from_dirs=labels_from_dirs)
    if limit is not None:
        if limit <= 0:
            raise SourceError(f"--limit must be positive, got {limit}")
        images = images.subset(np.arange(min(limit, len(images))))
    return images


def partial_dir(version: str, images: ImageSet, chunk: int) -> Path:
    """Where a build's finished chunks wait: keyed by encoder version, exact pixels and chunk size."""
    key = hashlib.sha256(f"{version}|{images.fingerprint()}|{chunk}".encode()).hexdigest()[:16]
    return paths.home() / "indexes" / ".partial" / f"{version}-{key}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def _load_chunk(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    try:
        vec = np.load(path) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return vec if vec is not None and vec.shape == shape else None


def embed_chunks(encoder: OnnxEncoder, images: np.ndarray, work_dir: Path, batch: int = 256,
                 chunk: int = DEFAULT_CHUNK, on_chunk: Callable[[int], None] | None = None,
                 progress: bool = True) -> tuple[np.ndarray, int]:
    """Encoder stage with resumable chunks: returns ``(vectors, chunks_computed_now)``.

    Chunk ``i`` covers ``images[i*chunk:(i+1)*chunk]`` and is written atomically to ``chunk-%05d.npy``;
    existing chunks are reused, so an interrupted build resumes. ``on_chunk(i)`` runs after each new chunk.
    """
    from tqdm import tqdm

    if chunk <= 0:
        raise ValueError(f"chunk size must be positive, got {chunk}")
    work_dir.mkdir(parents=True, exist_ok=True)
    n_chunks = (len(images) + chunk - 1) // chunk
    parts, computed = [], 0
    with tqdm(total=len(images), desc="embedding", unit="img", disable=not progress, file=sys.stderr) as bar:
        for i in range(n_chunks):
            path = work_dir / f"chunk-{i:05d}.npy"
            lo, hi = i * chunk, min((i + 1) * chunk, len(images))
            vec = _load_chunk(path, (hi - lo, encoder.dim))
            if vec is None:
                vec = encoder.embed_many(images[lo:hi], batch)
                _save_npy(path, vec)
                computed += 1
                if on_chunk is not None:
                    on_chunk(i)
            parts.append(vec)
            bar.update(hi - lo)
    log.info("embedded %d images: %d of %d chunks computed, %d resumed", len(images), computed, n_chunks,
             n_chunks - computed)
    vectors = np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype=np.float32)
    return vectors, computed


def item_metadata(images: ImageSet) -> list[dict]:
    """Per-item metadata: URI, label name (and index) when the source has labels."""
    metas = []
    for i, uri in enumerate(images.uris):
        m: dict = {"uri": uri}
        if images.labels is not None:
            y = int(images.labels[i])
            m["label"] = images.classes[y] if images.classes else str(y)
            m["label_id"] = y
        metas.append(m)
    return metas


def build_index(vectors: np.ndarray, metadata: list[dict], encoder_version: str, factory: str = "auto"
                ) -> VectorIndex:
    """Writer stage, in memory: choose (unless given) and fill the index."""
    if len(vectors) == 0:
        raise IndexStoreError("nothing to index: the source has no images")
    return VectorIndex.build(vectors, metadata, encoder_version, factory)


# ---------------------------------------------------------------------------------------------- workflows
@dataclass
class BuildConfig:
    """``byol index build``: which encoder, which images (a source, or ``from_collection``), how."""

    model: str = "latest"
    data: str = "fashion-mnist"
    data_root: str | None = None
    split: str = "train"
    from_collection: bool = False
    limit: int | None = None
    factory: str = "auto"
    batch: int = 256
    chunk: int = DEFAULT_CHUNK
    force: bool = False
    progress: bool = True


def build(cfg: BuildConfig) -> dict:
    """Embed a source (resumably) and publish the index of that encoder version; returns what was built."""
    encoder = open_encoder(cfg.model)
    store = collection()
    if cfg.from_collection:
        images = read_items(store.items(), encoder.input_size, store, cfg.data_root)
    else:
        images = read_images(cfg.data, cfg.split, encoder.input_size, cfg.data_root, cfg.limit)
    if images.skipped:
        log.warning("%d unreadable image(s) skipped", images.skipped)
    work = partial_dir(encoder.version, images, cfg.chunk)
    vectors, computed = embed_chunks(encoder, images.images, work, cfg.batch, cfg.chunk, progress=cfg.progress)
    index = build_index(vectors, item_metadata(images), encoder.version, cfg.factory)
    target = paths.index_dir(encoder.version)
    writes.publish(index, target, store, force=cfg.force, record=not cfg.from_collection)
    shutil.rmtree(work, ignore_errors=True)
    return {"version": encoder.version, "size": len(index), "factory": index.factory, "dim": index.dim,
            "path": str(target), "chunks_computed": computed, "skipped": images.skipped}


@dataclass
class AddConfig:
    """``byol index add``: image files or folders to embed and add durably to a version's index."""

    paths: list[str]
    model: str = "latest"
    label: str | None = None
    batch: int = 256


def add(cfg: AddConfig) -> dict:
    """Embed files and add them (collection first, then the index's log); returns the new ids."""
    encoder = open_encoder(cfg.model)
    files = [f for p in cfg.paths for f in iter_image_files(p)]
    if not files:
        raise SourceError(f"no image files in {' '.join(cfg.paths)}")
    images, _ = read_files(files, encoder.input_size)
    if not len(images):
        raise ImageError(f"none of the {len(files)} file(s) is a readable image")
    directory = paths.index_dir(encoder.version)
    if not DurableIndex.exists(directory):
        raise IndexStoreError(f"no index for encoder {encoder.version}; run 'byol index build --model "
                              f"{cfg.model}' first")
    vectors = encoder.embed_many(images.images, cfg.batch)
    metas = [{"uri": u, **({"label": cfg.label} if cfg.label else {})} for u in images.uris]
    with DurableIndex.open(directory, encoder_version=encoder.version) as durable:
        ids = writes.add(durable, collection(), vectors, metas, encoder.version)
        total = len(durable)
    return {"version": encoder.version, "ids": [int(i) for i in ids], "skipped": images.skipped, "size": total}


@dataclass
class SearchConfig:
    """``byol search``: one query image against a version's index."""

    image: str
    k: int = 10
    model: str = "latest"
    grid: str | None = None


def search(cfg: SearchConfig) -> dict:
    """Nearest neighbours of an image file (read-only: safe beside a running server); optionally a PNG grid."""
    if cfg.k < 1:
        raise ValueError(f"-k must be >= 1, got {cfg.k}")
    encoder = open_encoder(cfg.model)
    try:
        query = load(Path(cfg.image).read_bytes(), encoder.input_size)
    except OSError as exc:
        raise ImageError(f"cannot read {cfg.image}: {exc.strerror}") from None
    directory = paths.index_dir(encoder.version)
    if not DurableIndex.exists(directory):
        raise IndexStoreError(f"no index for encoder {encoder.version}; run 'byol index build' first")
    index = DurableIndex.open(directory, encoder_version=encoder.version, read_only=True)
    hits = index.search(encoder.embed(query[None]), cfg.k, encoder.version)[0]
    if cfg.grid:
        png = grid_png(query, [(_picture(h.metadata.get("uri"), encoder.input_size), f"{h.score:.3f}")
                               for h in hits])
        atomic_write(cfg.grid, lambda tmp: Path(tmp).write_bytes(png))
    return {"version": encoder.version, "hits": hits, "grid": cfg.grid}


def _picture(uri: str | None, size: int) -> np.ndarray | None:
    """A neighbour's pixels for the grid; a moved or unreadable file must not cost the whole grid."""
    try:
        return read_uri(uri or "", size, collection())
    except (ValueError, OSError) as exc:
        log.warning("no picture for %s: %s", uri, exc)
        return None


def grid_png(query: np.ndarray, neighbours: list[tuple[np.ndarray | None, str]], cell: int = 96) -> bytes:
    """One row: the query then each neighbour with its score; missing images are grey."""
    from PIL import Image, ImageDraw

    pad = 14
    canvas = Image.new("RGB", ((len(neighbours) + 1) * (cell + 4) + 4, cell + pad + 8), "white")
    draw = ImageDraw.Draw(canvas)
    tiles = [(query, "query")] + neighbours
    for j, (pixels, caption) in enumerate(tiles):
        tile = Image.new("RGB", (cell, cell), (160, 160, 160)) if pixels is None else \
            Image.fromarray(pixels).resize((cell, cell), Image.Resampling.NEAREST)
        x = 4 + j * (cell + 4)
        canvas.paste(tile, (x, 4))
        draw.text((x, cell + 6), caption, fill=(200, 0, 0) if j == 0 else (0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
