"""Images → vectors → FAISS index (``byol index build|add``), and looking things up in it (``byol search``).

A build is three stages, each testable alone (clip-retrieval style):
  reader  (``serving.contract.sources``: a data set, a folder or the stored collection → ``ImageSet``),
  encoder (:func:`embed_chunks`: ONNX Runtime in batches, one ``.npy`` per chunk under a *partial* directory keyed
           by model version + data, so a rerun after a kill skips the finished chunks),
  writer  (``index.writes.publish``: items recorded in the collection, the index published complete or not at all).

Files from folders are indexed as ``folder:<root>/<relative path>`` URIs (the root registered in the collection,
``index.collection``), so metadata — and the public ``/search`` — never holds a path of the server's disk.
``--from-embeddings`` skips the reader and encoder stages (an ``embed-folder`` output holds the vectors);
:func:`export` writes an index back out in that same layout.
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
from index.collection import FOLDER_PREFIX, Collection
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
    dataset_name,
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
    """``byol index build``: which encoder, which images (a source, ``from_collection``, or the vectors of an
    ``embed-folder`` output ``from_embeddings`` whose files live under ``root``), how."""

    model: str = "latest"
    data: str = "fashion-mnist"
    data_root: str | None = None
    split: str = "train"
    from_collection: bool = False
    from_embeddings: str | None = None
    root: str | None = None  # from_embeddings: the embedded folder on this machine (default: its manifest's)
    limit: int | None = None
    factory: str = "auto"
    batch: int = 256
    chunk: int = DEFAULT_CHUNK
    force: bool = False
    progress: bool = True


def build(cfg: BuildConfig) -> dict:
    """Embed a source (resumably) and publish the index of that encoder version; returns what was built."""
    if cfg.from_embeddings is not None:
        return build_from_embeddings(cfg)
    encoder = open_encoder(cfg.model)
    store = collection()
    if cfg.from_collection:
        images = read_items(store.items(), encoder.input_size, store, cfg.data_root)
    else:
        images = read_images(cfg.data, cfg.split, encoder.input_size, cfg.data_root, cfg.limit)
        if not dataset_name(cfg.data):  # a folder: its files become folder:<root>/<relative path> URIs
            images.uris = store.folder_uris(images.uris, root=cfg.data)
    if images.skipped:
        log.warning("%d unreadable image(s) skipped", images.skipped)
    work = partial_dir(encoder.version, images, cfg.chunk)
    vectors, computed = embed_chunks(encoder, images.images, work, cfg.batch, cfg.chunk, progress=cfg.progress)
    index = build_index(vectors, item_metadata(images), encoder.version, cfg.factory)
    target = paths.index_dir(encoder.version)
    writes.publish(index, target, store, force=cfg.force, record=not cfg.from_collection)
    shutil.rmtree(work, ignore_errors=True)
    return {"version": encoder.version, "size": len(index), "factory": index.factory, "dim": index.dim,
            "path": str(target), "chunks_computed": computed, "skipped": images.skipped, "tuning": index.tuning}


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
    root_of = {f: (p if Path(p).is_dir() else None) for p in cfg.paths for f in iter_image_files(p)}
    if not root_of:
        raise SourceError(f"no image files in {' '.join(cfg.paths)}")
    images, kept = read_files(list(root_of), encoder.input_size)
    if not len(images):
        raise ImageError(f"none of the {len(root_of)} file(s) is a readable image")
    directory = paths.index_dir(encoder.version)
    if not DurableIndex.exists(directory):
        raise IndexStoreError(f"no index for encoder {encoder.version}; run 'byol index build --model "
                              f"{cfg.model}' first")
    store = collection()
    by_root: dict[str | None, list[Path]] = {}
    for f in kept:  # a folder argument is its files' root; a lone file joins the root holding it (or its folder)
        by_root.setdefault(root_of[f], []).append(f)
    uri_of = {f: u for root, fs in by_root.items() for f, u in zip(fs, store.folder_uris(fs, root), strict=True)}
    vectors = encoder.embed_many(images.images, cfg.batch)
    metas = [{"uri": uri_of[f], **({"label": cfg.label} if cfg.label else {})} for f in kept]
    with DurableIndex.open(directory, encoder_version=encoder.version) as durable:
        ids = writes.add(durable, store, vectors, metas, encoder.version)
        total = len(durable)
    return {"version": encoder.version, "ids": [int(i) for i in ids], "skipped": images.skipped, "size": total}


def build_from_embeddings(cfg: BuildConfig) -> dict:
    """Index an ``embed-folder`` output as it is (no re-embedding): its encoder version must be the model's; its
    metadata rows (relative path, width, height, sha256) become the items' metadata, keyed by ``folder:`` URIs
    under the embedded folder (``cfg.root``, default the one its manifest names), registered as a root. An index
    that needs no training (Flat) is filled from the memory-mapped vectors a chunk at a time and its rows streamed
    into the item store: millions of items never sit in memory as Python objects."""
    from clients.workflows.embedding import iter_embedding_rows, read_embeddings
    from index.chooser import choose_index, parse_factory
    from index.fsio import now_iso

    vectors, _, manifest = read_embeddings(cfg.from_embeddings, rows=False)
    encoder = open_encoder(cfg.model)
    if manifest["encoder_version"] != encoder.version:
        raise IndexStoreError(f"{cfg.from_embeddings} was embedded with encoder {manifest['encoder_version']}, but "
                              f"--model {cfg.model} is {encoder.version}: pass --model {manifest['encoder_version']} "
                              "or embed the folder again with this model")
    if vectors.shape[1] != encoder.dim:
        raise IndexStoreError(f"{cfg.from_embeddings} holds {vectors.shape[1]}-d vectors, the model {encoder.dim}-d")
    if len(vectors) == 0:
        raise IndexStoreError("nothing to index: the source has no images")
    root = Path(cfg.root or manifest["folder"])
    if not root.is_dir():
        log.warning("the embedded folder %s is not on this machine: search works, thumbnails and rebuilds need "
                    "the files (pass --root where they live)", root)
    store = collection()
    name = store.register_root(root)
    keep, stamp = ("path", "width", "height", "sha256"), now_iso()

    def items():  # embed-folder's paths are relative to the folder: folder:<root>/<path>
        for i, r in enumerate(iter_embedding_rows(cfg.from_embeddings)):
            yield i, {"added_at": stamp, "uri": f"{FOLDER_PREFIX}{name}/{r['path']}",
                      **{k: r[k] for k in keep if r.get(k) is not None}}

    factory = cfg.factory if cfg.factory != "auto" else choose_index(len(vectors), vectors.shape[1])[0]
    if parse_factory(factory).kind == "Flat":
        index = VectorIndex.build(vectors, None, encoder.version, factory)
    else:  # trained or tuned on all the vectors: built in memory with its metadata
        index = build_index(np.asarray(vectors, dtype=np.float32), [m for _, m in items()], encoder.version, factory)
    target = paths.index_dir(encoder.version)
    writes.publish(index, target, store, force=cfg.force, items=items if index.metadata is None else None)
    return {"version": encoder.version, "size": len(index), "factory": index.factory, "dim": index.dim,
            "path": str(target), "tuning": index.tuning, "chunks_computed": 0,
            "skipped": len(manifest.get("skipped", [])),
            "from_embeddings": str(cfg.from_embeddings)}


@dataclass
class ExportConfig:
    """``byol index export``: a served index's vectors + metadata in the ``embed-folder`` layout."""

    out: str
    model: str = "latest"
    block: int = 65536  # vectors read from FAISS at a time


def export(cfg: ExportConfig) -> dict:
    """Write the index of ``cfg.model``'s version (log replayed: what a server would serve) to ``cfg.out`` as
    ``embeddings.npy`` (unit rows; approximate for PQ indexes) + ``metadata.parquet`` (id, uri, path, label,
    width, height, sha256) + ``manifest.json``; returns the manifest."""
    import pyarrow as pa

    from clients.workflows.embedding import EMBEDDINGS, METADATA, write_embeddings
    from index.chooser import parse_factory
    from index.vector_index import normalize
    from serving.contract.bundle import read_bundle
    from serving.store import bundle_path

    _, bundle = read_bundle(bundle_path(cfg.model))
    directory = paths.index_dir(bundle.version)
    if not DurableIndex.exists(directory):
        raise IndexStoreError(f"no index for encoder {bundle.version}; run 'byol index build --model "
                              f"{cfg.model}' first")
    with DurableIndex.open(directory, encoder_version=bundle.version, read_only=True) as durable:
        items = sorted(durable.items())
        ids = np.array([i for i, _ in items], dtype=np.int64)
        metas = [m for _, m in items]
        blocks = (normalize(durable.vectors(ids[lo:lo + cfg.block]), durable.dim)
                  for lo in range(0, len(ids), cfg.block))
        table = pa.table({
            "id": pa.array(ids, pa.int64()), "uri": [m.get("uri") for m in metas],
            "path": [m.get("path") or _relative_path(m.get("uri")) for m in metas],
            "label": [None if m.get("label") is None else str(m["label"]) for m in metas],
            "width": pa.array([m.get("width") for m in metas], pa.int32()),
            "height": pa.array([m.get("height") for m in metas], pa.int32()),
            "sha256": [m.get("sha256") for m in metas]})
        manifest = {"encoder_version": bundle.version, "dim": durable.dim, "input_size": bundle.input_size,
                    "count": len(ids), "factory": durable.factory,
                    "exact": parse_factory(durable.factory).ivf_storage != "PQ", "source": "index",
                    "normalized": True, "files": {"embeddings": EMBEDDINGS, "metadata": METADATA}}
        write_embeddings(Path(cfg.out), blocks, len(ids), durable.dim, table, manifest)
    return {**manifest, "out": str(cfg.out)}


def _relative_path(uri: str | None) -> str | None:
    """The path inside its folder root of a ``folder:`` URI (None for other kinds: uploads, data set items)."""
    if not uri or not uri.startswith(FOLDER_PREFIX):
        return None
    return uri[len(FOLDER_PREFIX):].partition("/")[2] or None


@dataclass
class SearchConfig:
    """``byol search``: one query image against a version's index."""

    image: str
    k: int = 10
    model: str = "latest"
    grid: str | None = None
    columns: int = 5  # neighbours per row of the grid


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
        from clients.workflows.grid import Tile, grid_png

        tiles = [Tile(_picture(h.metadata.get("uri"), encoder.input_size), f"#{rank}  score {h.score:.3f}",
                      f"{h.metadata.get('label', 'no label')} · id {h.id}") for rank, h in enumerate(hits, 1)]
        png = grid_png(Tile(query, "query", Path(cfg.image).name), tiles,
                       f"{len(hits)} nearest neighbours · encoder {encoder.version}", cfg.columns)
        atomic_write(cfg.grid, lambda tmp: Path(tmp).write_bytes(png))
    return {"version": encoder.version, "hits": hits, "grid": cfg.grid}


def _picture(uri: str | None, size: int) -> np.ndarray | None:
    """A neighbour's pixels for the grid; a moved or unreadable file must not cost the whole grid."""
    try:
        return read_uri(uri or "", size, collection())
    except (ValueError, OSError) as exc:
        log.warning("no picture for %s: %s", uri, exc)
        return None


def repair(model: str | None, collection: bool = False) -> dict:
    """``byol index repair``: recover a damaged item store, a version's (``model``: a version, or a tag resolved in
    the store) or the collection's, keeping every row SQLite can still read (``index.repair.repair``,
    ``index.collection.repair``)."""
    from index.collection import repair as repair_collection
    from index.repair import repair as repair_store

    if collection:
        return repair_collection(paths.collection_dir())
    directory = paths.index_dir(model.split(":")[-1])
    if not DurableIndex.exists(directory):  # a damaged store set aside counts: a repair may resume
        directory = paths.index_dir(open_encoder(model).version)
    if not DurableIndex.exists(directory):
        raise IndexStoreError(f"no index for {model} at {directory}")
    return repair_store(directory)

