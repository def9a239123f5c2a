"""``byol embed-folder``: a folder of images → vectors + metadata on disk, without a server, in the layout that
autofaiss and clip-retrieval users know:

    OUT/embeddings.npy     float32 [N, D], unit norm, row i = file i
    OUT/metadata.parquet   id, path (relative to the folder), width, height, sha256 — same order
    OUT/manifest.json      encoder version, dim, input size, folder, counts, skipped files

Resumable: files are embedded in chunks written atomically under ``OUT/.partial/`` (keyed by the encoder version,
the file list and the chunk size), so a rerun after a kill embeds only what is missing; the three outputs appear
(atomically) only when every chunk is done. Unreadable files are skipped and listed in the manifest.

The same layout goes both ways: ``byol index build --from-embeddings OUT`` indexes such an output (no re-embedding),
and ``byol index export --model TAG --out OUT`` writes a served index in it (:func:`write_embeddings` for both).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.contract.atomic import atomic_publish_dir, atomic_write_bytes, atomic_write_json
from serving.contract.image import ImageError, decode, fit
from serving.contract.sources import SourceError, iter_image_files

log = logging.getLogger(__name__)

EMBEDDINGS, METADATA, MANIFEST = "embeddings.npy", "metadata.parquet", "manifest.json"
DEFAULT_CHUNK = 2048


@dataclass
class EmbedFolderConfig:
    folder: Path
    out: Path
    model: str = "latest"
    batch: int = 256
    chunk: int = DEFAULT_CHUNK
    workers: int = 4  # decoding threads
    progress: bool = True


def _read(path: Path, size: int) -> tuple[np.ndarray, dict] | None:
    """One file → model input + its metadata row, or None when it cannot be read as an image."""
    try:
        data = path.read_bytes()
        img = decode(data)
        return fit(img, size), {"width": img.size[0], "height": img.size[1],
                                "sha256": hashlib.sha256(data).hexdigest()}
    except (ImageError, OSError) as exc:
        log.warning("skipping %s: %s", path, exc)
        return None


def _chunk(encoder, files: list[Path], root: Path, cfg: EmbedFolderConfig, pool) -> tuple[np.ndarray, list[dict],
                                                                                          list[str]]:
    rows, pixels, skipped = [], [], []
    for path, got in zip(files, pool.map(lambda f: _read(f, encoder.input_size), files), strict=True):
        rel = str(path.relative_to(root))
        if got is None:
            skipped.append(rel)
            continue
        pixels.append(got[0])
        rows.append({"path": rel, **got[1]})
    vectors = encoder.embed_many(np.stack(pixels), cfg.batch) if pixels else np.zeros((0, encoder.dim), np.float32)
    return vectors, rows, skipped


def embed_folder(cfg: EmbedFolderConfig) -> dict:
    """Embed every image file under ``cfg.folder`` with bundle ``cfg.model``; returns the manifest."""
    from tqdm import tqdm

    from clients.workflows.indexing import open_encoder

    root, out = Path(cfg.folder).resolve(), Path(cfg.out)
    if cfg.chunk <= 0 or cfg.batch <= 0:
        raise ValueError("--chunk and --batch must be positive")
    if (out / MANIFEST).is_file():
        raise FileExistsError(f"{out} already holds embeddings ({MANIFEST}); pick a new --out")
    files = list(iter_image_files(root))
    if not files:
        raise SourceError(f"no image files under {root}")
    encoder = open_encoder(cfg.model)
    key = hashlib.sha256("\n".join([encoder.version, str(cfg.chunk), *map(str, files)]).encode()).hexdigest()[:16]
    partial = out / ".partial" / key
    partial.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max(1, cfg.workers)) as pool, tqdm(total=len(files), desc="embedding", unit="img",
                                                                 disable=not cfg.progress, file=sys.stderr) as bar:
        for i, lo in enumerate(range(0, len(files), cfg.chunk)):
            done = partial / f"chunk-{i:05d}.json"
            if not done.is_file():
                vectors, rows, skipped = _chunk(encoder, files[lo:lo + cfg.chunk], root, cfg, pool)
                buf = io.BytesIO()
                np.save(buf, vectors)
                atomic_write_bytes(partial / f"chunk-{i:05d}.npy", buf.getvalue())
                atomic_write_json(done, {"rows": rows, "skipped": skipped})  # last: the chunk's commit record
            bar.update(min(cfg.chunk, len(files) - lo))
    manifest = _publish(encoder, root, out, partial, (len(files) + cfg.chunk - 1) // cfg.chunk)
    shutil.rmtree(out / ".partial", ignore_errors=True)
    return manifest


def _publish(encoder, root: Path, out: Path, partial: Path, n_chunks: int) -> dict:
    """Concatenate the chunks into the three outputs (:func:`write_embeddings`)."""
    import pyarrow as pa

    metas = [json.loads((partial / f"chunk-{i:05d}.json").read_text()) for i in range(n_chunks)]
    rows = [r for m in metas for r in m["rows"]]
    skipped = [s for m in metas for s in m["skipped"]]
    manifest = {"encoder_version": encoder.version, "dim": encoder.dim, "input_size": encoder.input_size,
                "folder": str(root), "count": len(rows), "skipped": skipped, "normalized": True,
                "files": {"embeddings": EMBEDDINGS, "metadata": METADATA}}
    table = pa.table({"id": pa.array(range(len(rows)), pa.int64()), "path": [r["path"] for r in rows],
                      "width": pa.array([r["width"] for r in rows], pa.int32()),
                      "height": pa.array([r["height"] for r in rows], pa.int32()),
                      "sha256": [r["sha256"] for r in rows]})
    blocks = (np.load(partial / f"chunk-{i:05d}.npy") for i in range(n_chunks))
    write_embeddings(out, blocks, len(rows), encoder.dim, table, manifest)
    return manifest


def write_embeddings(out: Path, blocks: Iterable[np.ndarray], n: int, dim: int, table, manifest: dict) -> None:
    """The one writer of the layout (``byol embed-folder`` and ``byol index export``): ``blocks`` of float32 rows
    (``n`` in all, in ``table``'s order) streamed into ``embeddings.npy`` — millions of vectors never sit in RAM at
    once — beside ``metadata.parquet`` (the pyarrow ``table``) and ``manifest.json``.

    Atomic: written beside ``out`` and moved in, the manifest last (its presence means complete); ``out`` may hold
    only an interrupted run's ``.partial/`` — a finished output is refused, never overwritten."""
    import pyarrow.parquet as pq

    if (out / MANIFEST).is_file():
        raise FileExistsError(f"{out} already holds embeddings ({MANIFEST}); pick a new --out")
    if table.num_rows != n:
        raise ValueError(f"{n} vectors but {table.num_rows} metadata rows")

    def build(tmp: Path) -> None:
        arr = np.lib.format.open_memmap(tmp / EMBEDDINGS, mode="w+", dtype=np.float32, shape=(n, dim))
        at = 0
        for part in blocks:
            arr[at:at + len(part)] = part
            at += len(part)
        if at != n:
            raise ValueError(f"expected {n} vectors, got {at}")
        arr.flush()
        del arr
        pq.write_table(table, tmp / METADATA)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    if out.exists():  # an interrupted run's .partial/ lives there: publish beside it, then move the files in
        staged = out.parent / f".{out.name}.publish"
        shutil.rmtree(staged, ignore_errors=True)
        atomic_publish_dir(build, staged)
        for name in (EMBEDDINGS, METADATA, MANIFEST):
            (staged / name).rename(out / name)  # the manifest last: its presence means complete
        shutil.rmtree(staged, ignore_errors=True)
    else:
        atomic_publish_dir(build, out)


def read_embeddings(out: str | Path, rows: bool = True) -> tuple[np.ndarray, list[dict] | None, dict]:
    """``(vectors [N, D] memory-mapped, metadata rows, manifest)`` of a finished ``embed-folder`` output; with
    ``rows=False`` the rows are counted, not read (:func:`iter_embedding_rows` streams them)."""
    import pyarrow.parquet as pq

    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise SourceError(f"{out} holds no finished embed-folder output ({MANIFEST} missing)")
    manifest = json.loads((out / MANIFEST).read_text())
    vectors = np.load(out / EMBEDDINGS, mmap_mode="r")
    table_rows = pq.read_table(out / METADATA).to_pylist() if rows else None
    count = len(table_rows) if rows else pq.ParquetFile(out / METADATA).metadata.num_rows
    if count != len(vectors) or vectors.shape[1:] != (manifest["dim"],):
        raise SourceError(f"{out}: {len(vectors)} vectors of shape {vectors.shape[1:]} but {count} metadata "
                          f"rows and dim {manifest['dim']} (corrupt?)")
    return vectors, table_rows, manifest


def iter_embedding_rows(out: str | Path, batch: int = 65_536):
    """The metadata rows of an ``embed-folder`` output, in order, a parquet batch at a time (memory stays flat)."""
    import pyarrow.parquet as pq

    for part in pq.ParquetFile(Path(out) / METADATA).iter_batches(batch_size=batch):
        yield from part.to_pylist()
