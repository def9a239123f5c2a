"""``byol index build|add`` and ``byol search``: images → vectors → FAISS index, and looking things up in it.

Build is three stages, each testable alone (clip-retrieval style):
  reader  (:func:`read_images`: a source → ``ImageSet`` with URIs and labels),
  encoder (:func:`embed_chunks`: ONNX Runtime in batches, one ``.npy`` per chunk under a *partial* directory
           keyed by model version + data, so a rerun after a kill skips the finished chunks),
  writer  (:func:`build_index` + :func:`publish_index`: the index is published at ``paths.index_dir(version)``
           only when complete: a kill at any point leaves the served index as it was).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from index.durable import DurableIndex
from index.vector_index import IndexStoreError, VectorIndex
from serving import paths
from serving.collection import Item, add_items, load_image
from serving.contract.atomic import atomic_publish_dir, atomic_write
from serving.contract.image import ImageError, load
from serving.contract.sources import ImageSet, SourceError, iter_image_files, load_source
from serving.encoder import OnnxEncoder

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 4096


# ---------------------------------------------------------------------------------------------- stages
def open_encoder(tag: str) -> OnnxEncoder:
    """Model tag (``latest``, a version, ``byol-encoder:<v>``) → encoder, through the BentoML model store."""
    from serving.store import bundle_path

    return OnnxEncoder(bundle_path(tag))


def read_images(data: str, split: str, size: int, data_root: str | None = None, limit: int | None = None,
                labels_from_dirs: bool = False) -> ImageSet:
    """Reader stage: any supported source at the model's input size, optionally the first ``limit`` items."""
    images = load_source(data, split, size=size, data_root=data_root, labels_from_dirs=labels_from_dirs)
    if limit is not None:
        if limit <= 0:
            raise SourceError(f"--limit must be positive, got {limit}")
        images = images.subset(np.arange(min(limit, len(images))))
    return images


def read_collection(size: int, data_root: str | None = None) -> ImageSet:
    """Reader stage for a rebuild: every item of the stored collection (a new encoder version re-indexes the
    images themselves, never old vectors). Unreadable items are skipped and counted."""
    from serving.collection import CollectionError, iter_items

    pixels, uris, names, skipped = [], [], [], 0
    for item in iter_items():
        try:
            pixels.append(load_image(item.uri, size, data_root=data_root))
        except (CollectionError, ImageError, SourceError, OSError) as exc:
            skipped += 1
            log.warning("collection item %s skipped: %s", item.uri, exc)
            continue
        uris.append(item.uri)
        names.append(item.label)
    if not pixels:
        raise SourceError("the collection is empty: build an index from a data set or add images first")
    classes = sorted({n for n in names if n is not None}) or None
    labels = None
    if classes and all(n is not None for n in names):
        lookup = {c: i for i, c in enumerate(classes)}
        labels = np.array([lookup[n] for n in names], dtype=np.int64)
    return ImageSet(np.stack(pixels), labels, classes if labels is not None else None, uris, skipped)


def partial_dir(version: str, images: ImageSet, chunk: int) -> Path:
    """Where a build's finished chunks wait: keyed by encoder version, exact pixels and chunk size."""
    key = hashlib.sha256(f"{version}|{images.fingerprint()}|{chunk}".encode()).hexdigest()[:16]
    return paths.home() / "indexes" / ".partial" / f"{version}-{key}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    atomic_write(path, _write)


def embed_batches(encoder: OnnxEncoder, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """uint8 ``[N, S, S, 3]`` → float32 ``[N, D]`` in batches (no files)."""
    if batch <= 0:
        raise ValueError(f"--batch must be positive, got {batch}")
    out = [encoder.embed(images[i:i + batch]) for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, encoder.dim), dtype=np.float32)


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
            vec = None
            if path.is_file():
                try:
                    vec = np.load(path)
                except (OSError, ValueError):
                    vec = None
                if vec is not None and vec.shape != (hi - lo, encoder.dim):
                    vec = None
            if vec is None:
                vec = embed_batches(encoder, images[lo:hi], batch)
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


def publish_index(index: VectorIndex, directory: Path, force: bool = False) -> None:
    """Writer stage, on disk: a new directory appears complete (rename); an existing one is replaced durably."""
    if not (directory / "CURRENT").is_file():
        if directory.exists():
            shutil.rmtree(directory)  # a directory without CURRENT holds no index (e.g. a bare LOCK)
        atomic_publish_dir(lambda tmp: index.save(tmp, extra={"wal_seq": 0}), directory)
        return
    if not force:
        raise IndexStoreError(
            f"an index for {index.encoder_version} already exists at {directory}; pass --force to rebuild it "
            "(items added since the last build are kept only through the collection)"
        )
    with DurableIndex.open(directory) as durable:
        durable.replace(index)


# ---------------------------------------------------------------------------------------------- commands
def build(args: argparse.Namespace) -> int:
    encoder = open_encoder(args.model)
    version = encoder.version
    if args.collection:
        images = read_collection(encoder.input_size, args.data_root)
    else:
        images = read_images(args.data, args.split, encoder.input_size, args.data_root, args.limit)
    if images.skipped:
        log.warning("%d unreadable image(s) skipped", images.skipped)
    work = partial_dir(version, images, args.chunk)
    vectors, computed = embed_chunks(encoder, images.images, work, args.batch, args.chunk,
                                     progress=not args.quiet)
    index = build_index(vectors, item_metadata(images), version, args.factory)
    target = paths.index_dir(version)
    publish_index(index, target, force=args.force)
    if not args.collection:
        labels = [m.get("label") for m in item_metadata(images)]
        add_items(Item(uri, label) for uri, label in zip(images.uris, labels, strict=True))
    shutil.rmtree(work, ignore_errors=True)
    print(f"indexed {len(index)} images with encoder {version} ({index.factory}, dim {index.dim}) "
          f"at {target}; {computed} chunk(s) embedded now, the rest resumed")
    return 0


def add(args: argparse.Namespace) -> int:
    encoder = open_encoder(args.model)
    files = [f for p in args.paths for f in iter_image_files(p)]
    if not files:
        raise SourceError(f"no image files in {' '.join(args.paths)}")
    pixels, uris, skipped = [], [], 0
    for f in files:
        try:
            pixels.append(load(f.read_bytes(), encoder.input_size))
            uris.append(str(f.resolve()))
        except (ImageError, OSError) as exc:
            skipped += 1
            print(f"skipped {f}: {exc}", file=sys.stderr)
    if not pixels:
        raise ImageError(f"none of the {len(files)} file(s) is a readable image")
    vectors = embed_batches(encoder, np.stack(pixels), args.batch)
    metas = [{"uri": u, **({"label": args.label} if args.label else {})} for u in uris]
    directory = paths.index_dir(encoder.version)
    if not (directory / "CURRENT").is_file():
        raise IndexStoreError(f"no index for encoder {encoder.version}; run 'byol index build --model "
                              f"{args.model}' first")
    with DurableIndex.open(directory, encoder_version=encoder.version) as durable:
        ids = durable.add(vectors, metas, encoder.version)
        total = len(durable)
    add_items(Item(u, args.label) for u in uris)
    print(f"added {len(ids)} image(s) (ids {int(ids[0])}..{int(ids[-1])}), skipped {skipped}; index holds {total}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="byol index", description="build or extend the FAISS index")
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="embed a data set and (re)build the index of a model version")
    b.add_argument("--model", default="latest", help="bundle tag: latest, a version, or byol-encoder:<version>")
    b.add_argument("--data", default="fashion-mnist", help="fashion-mnist, cifar10 or a folder of images")
    b.add_argument("--data-root", default=None, help="where the data set lives (cifar10 needs it)")
    b.add_argument("--split", default="train", choices=["train", "test"])
    b.add_argument("--collection", action="store_true",
                   help="re-index the stored collection (every item indexed or added so far) instead of --data")
    b.add_argument("--limit", type=int, default=None, help="index only the first N items")
    b.add_argument("--factory", default="auto", help="'auto' (chosen from N, dim, memory) or a FAISS factory string")
    b.add_argument("--batch", type=int, default=256)
    b.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="items per resumable chunk")
    b.add_argument("--force", action="store_true", help="replace an existing index of this version")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    a = sub.add_parser("add", help="embed image files and add them to the index (durably)")
    a.add_argument("paths", nargs="+", help="image files or folders")
    a.add_argument("--model", default="latest")
    a.add_argument("--label", default=None, help="label to record with these images")
    a.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    return build(args) if args.action == "build" else add(args)


# ---------------------------------------------------------------------------------------------- search
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


def search_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="byol search", description="nearest neighbours of an image")
    parser.add_argument("image", help="query image file")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--model", default="latest")
    parser.add_argument("--grid", default=None, help="write a PNG: the query and its neighbours")
    args = parser.parse_args(argv)
    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    encoder = open_encoder(args.model)
    try:
        query = load(Path(args.image).read_bytes(), encoder.input_size)
    except OSError as exc:
        raise ImageError(f"cannot read {args.image}: {exc.strerror}") from None
    directory = paths.index_dir(encoder.version)
    if not (directory / "CURRENT").is_file():
        raise IndexStoreError(f"no index for encoder {encoder.version}; run 'byol index build' first")
    index = DurableIndex.open(directory, encoder_version=encoder.version, read_only=True)
    hits = index.search(encoder.embed(query[None]), args.k, encoder.version)[0]
    print(f"{'rank':>4}  {'score':>6}  {'id':>8}  {'label':<14}  uri")
    for r, h in enumerate(hits, 1):
        print(f"{r:>4}  {h.score:6.3f}  {h.id:>8}  {str(h.metadata.get('label', '')):<14}  {h.metadata.get('uri', '')}")
    if args.grid:
        tiles = []
        for h in hits:
            try:
                pixels = load_image(h.metadata["uri"], encoder.input_size)
            except Exception as exc:  # a moved file must not cost the whole grid
                log.warning("no picture for %s: %s", h.metadata.get("uri"), exc)
                pixels = None
            tiles.append((pixels, f"{h.score:.3f}"))
        png = grid_png(query, tiles)
        atomic_write(args.grid, lambda tmp: Path(tmp).write_bytes(png))
        print(f"grid written to {args.grid}")
    return 0
