"""An embedding worker's loaded encoder — ONE bundle version's ONNX graph and its micro-batcher — as one immutable
object, and which bundle a server serves.

An embedding worker (:mod:`serving.service`) holds a single :class:`Runtime` reference. Each request takes that
reference once, at its start, and embeds entirely with it; the vectors travel to the index service
(:mod:`serving.index_service`) with the runtime's version, and the index refuses vectors of any other version
(:mod:`serving.following` re-embeds them). So a hot swap never mixes two versions in one answer, and every response
names the version that produced it. Torch-free.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving import metrics
from serving.batching import MicroBatcher
from serving.contract.atomic import now_iso
from serving.contract.bundle import MODEL_NAME, BundleError
from serving.contract.encoder import OnnxEncoder
from serving.contract.sources import decode_each, read_uri
from serving.release import served_tag

log = logging.getLogger(__name__)

MAX_BATCH_SIZE = 64  # images per ONNX Runtime call made by the micro-batcher
MAX_WAIT_MS = 2.0  # longest a lone request waits for others to share its model call
ORT_THREADS_ENV = "BYOL_ORT_THREADS"  # ONNX Runtime intra-op threads of one embedding worker (0: shared out)
GRAPH_ENV = "BYOL_ENCODER_FILE"  # which graph of the bundle to serve (unset: encoder.onnx; e.g. encoder_int8.onnx)


WORKERS_ENV = "BYOL_EMBED_WORKERS"  # embedding worker processes (unset: one per GPU, else one per 2 CPUs)
CPUS_PER_WORKER = 2


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_count() -> int:
    """GPUs ONNX Runtime could run the encoder on (0 with the CPU build); no CUDA library is loaded to count."""
    try:
        import onnxruntime as ort
    except ImportError:
        return 0
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(list(Path("/dev").glob("nvidia[0-9]*"))) or 1


def _int_env(name: str, env, default: int, least: int) -> int:
    value = env.get(name, "").strip()
    try:
        number = int(value) if value else default
    except ValueError:
        raise BundleError(f"{name} must be an integer, got {value!r}") from None
    if number < least:
        raise BundleError(f"{name} must be {least} or more, got {number}")
    return number


def embed_workers(env=None) -> int:
    """How many embedding worker processes ``bentoml serve`` starts: ``BYOL_EMBED_WORKERS``, else one per GPU (each
    worker gets its own: BentoML sets ``CUDA_VISIBLE_DEVICES`` per worker), else one per two CPUs — a worker decodes
    on its event loop and decode threads and runs ONNX Runtime on ``BYOL_ORT_THREADS`` more (bench/serve_split.py
    measured 1 and 2 workers on 2 CPUs)."""
    env = os.environ if env is None else env
    return _int_env(WORKERS_ENV, env, gpu_count() or max(1, cpu_count() // CPUS_PER_WORKER), 1)


def ort_threads(env=None) -> int:
    """``BYOL_ORT_THREADS`` (0 when unset: the CPUs shared out between the embedding workers); a malformed value is
    an error at start."""
    env = os.environ if env is None else env
    threads = _int_env(ORT_THREADS_ENV, env, 0, 0)
    if threads == 0 and not gpu_count():
        workers = embed_workers(env)
        threads = max(1, cpu_count() // workers) if workers > 1 else 0
    return threads


def _served_encoder(tag: str) -> OnnxEncoder:
    """Bundle ``tag``'s graph as served: ``BYOL_ENCODER_FILE`` picks it, ``BYOL_ORT_THREADS`` sizes its threads."""
    from serving.store import bundle_path

    return OnnxEncoder(bundle_path(tag), intra_op_threads=ort_threads(),
                       onnx_file=os.environ.get(GRAPH_ENV, "").strip() or None)


def resolve_tag(explicit: str | None = None) -> str:
    """Which bundle to serve: an explicit tag, else ``$BYOL_MODEL_TAG``, else — inside a built Bento — the encoder it
    packed, else the promoted release, else latest."""
    return explicit or os.environ.get("BYOL_MODEL_TAG") or packed_tag() or served_tag()


def packed_tag(bento_root: Path | None = None) -> str | None:
    """The encoder tag a built Bento packed, when this code runs from one (``<bento>/src/serving/runtime.py`` beside
    ``<bento>/bento.yaml``). A Bento must serve what it packed: the store it is served from may hold newer encoders
    (and a container's store holds only the packed one)."""
    root = bento_root or Path(__file__).resolve().parents[2]
    import yaml

    try:
        info = yaml.safe_load((root / "bento.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    tags = [m.get("tag", "") for svc in (info or {}).get("services") or [] for m in svc.get("models") or []]
    return next((t for t in tags if t.startswith(f"{MODEL_NAME}:")), None)


@dataclass(frozen=True)
class Runtime:
    """One version's encoder and the micro-batcher that feeds it: what an embedding worker holds. The index, the
    collection and the classifiers of that version live in the index service (:mod:`serving.holdings`)."""

    encoder: OnnxEncoder
    batcher: MicroBatcher = field(repr=False)
    loaded_at: str = ""

    @property
    def version(self) -> str:
        return self.encoder.version

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def input_size(self) -> int:
        return self.encoder.input_size

    async def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N,S,S,3]`` → float32 ``[N,D]`` through this version's micro-batcher."""
        start = time.perf_counter()
        out = await self.batcher.submit(images)
        metrics.observe_embed(time.perf_counter() - start)
        return out

    def info(self) -> dict:
        m = self.encoder.manifest
        return {
            "version": self.version,
            "dim": self.dim,
            "input_size": self.input_size,
            "architecture": m.architecture,
            "parent_version": m.parent_version,
            "created_at": m.created_at,
            "metrics": m.metrics,
            "providers": self.encoder.providers,
            "graph": self.encoder.onnx_file,  # encoder.onnx unless BYOL_ENCODER_FILE picks another of the bundle
            "loaded_at": self.loaded_at,
            "batching": {"max_batch_size": self.batcher.max_batch_size,
                         "max_wait_ms": self.batcher.max_wait_s * 1000.0,
                         "recent_batches": len(self.batcher.batch_sizes),
                         "recent_mean_batch": float(np.mean(self.batcher.batch_sizes)) if self.batcher.batch_sizes
                         else 0.0},
        }

    def close(self) -> None:
        """Stop the batcher's worker. Requests still holding this runtime finish (embedding runs unbatched). Call
        once."""
        if not self.batcher.closed:
            self.batcher.close()


def embed_items(encoder: OnnxEncoder, items: list, collection) -> tuple[np.ndarray, list]:
    """Collection items → vectors of those that can still be read (``index.writes.reconcile``'s ``embed``)."""
    pixels, readable, _ = decode_each(items, lambda it: read_uri(it.uri, encoder.input_size, collection),
                                      what="collection item")
    vectors = encoder.embed_many(np.stack(pixels)) if pixels else np.zeros((0, encoder.dim), np.float32)
    return vectors, readable


def check_bundle(tag: str) -> str:
    """Resolve and test-run the bundle a server would load; returns its version or raises ``BundleError``.

    Cheap enough to run before a server starts, so a missing or corrupt bundle ends with one line there.
    """
    encoder = _served_encoder(tag)
    _test_run(encoder)
    return encoder.version


def _test_run(encoder: OnnxEncoder) -> None:
    """A graph that loads but cannot run (or answers the wrong shape) must fail now, not on the first request."""
    img = np.zeros((1, encoder.input_size, encoder.input_size, 3), dtype=np.uint8)
    try:
        out = encoder.embed(img)
    except Exception as exc:
        raise BundleError(f"bundle {encoder.version}: the encoder fails on a test image: {exc}") from None
    if out.shape != (1, encoder.dim) or not np.all(np.isfinite(out)):
        raise BundleError(f"bundle {encoder.version}: the encoder returns {list(out.shape)} (expected "
                          f"[1, {encoder.dim}]) or non-finite values")


def load_encoder(tag: str) -> OnnxEncoder:
    """Bundle ``tag``'s served graph, test-run: raises :class:`BundleError` (one line) when it is unusable."""
    encoder = _served_encoder(tag)
    _test_run(encoder)
    return encoder


def load_runtime(tag: str, *, max_batch_size: int = MAX_BATCH_SIZE, max_wait_ms: float = MAX_WAIT_MS) -> Runtime:
    """An embedding worker's runtime of bundle ``tag``; raise :class:`BundleError` (one line) when unusable."""
    encoder = load_encoder(tag)
    log.info("loaded encoder %s (dim %d, input %d px, providers %s)", encoder.version, encoder.dim,
             encoder.input_size, encoder.providers)
    return Runtime(encoder=encoder,
                   batcher=MicroBatcher(encoder.embed, max_batch_size, max_wait_ms, on_batch=metrics.observe_batch),
                   loaded_at=now_iso())
