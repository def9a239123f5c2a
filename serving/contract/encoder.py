"""OnnxEncoder: uint8 images → L2-normalised float32 embeddings with ONNX Runtime (no torch)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from serving.contract.bundle import BundleError, read_bundle

log = logging.getLogger(__name__)


def pick_providers() -> list[str]:
    """CUDA when this ONNX Runtime build has it, CPU always as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxEncoder:
    """Wraps one bundle. ``embed`` takes uint8 ``[N, S, S, 3]`` from :func:`serving.contract.image.load_batch`."""

    def __init__(self, bundle_dir: str | os.PathLike, providers: list[str] | None = None,
                 intra_op_threads: int = 0, onnx_file: str | None = None, spinning: bool = False) -> None:
        """``onnx_file`` picks another graph of the bundle (``encoder_int8.onnx``, ``encoder_fp16.onnx``);
        ``intra_op_threads`` 0 lets ONNX Runtime use every core, which is right for a dedicated server and wrong
        beside other workers.

        ``spinning`` (off by default): ONNX Runtime's thread pool otherwise keeps its threads busy-waiting for the
        next call after each one. On a box whose cores are shared — a server's event loop and decode threads, a load
        generator, other jobs — those spinning threads take the CPU the rest needs: measured on 2 shared cores, a
        224-px ResNet-18 ran 1.27x faster without spinning, a 28-px batch of 64 1.9x, and the single-image HTTP
        path lost a core-fraction to it. Turn it on for a dedicated machine where every microsecond of latency
        counts."""
        import onnxruntime as ort

        onnx_path, self.manifest = read_bundle(bundle_dir)
        self.bundle_dir = Path(bundle_dir)
        if onnx_file is not None:
            onnx_path = self.bundle_dir / onnx_file
            if not onnx_path.is_file():
                raise BundleError(f"bundle {bundle_dir}: {onnx_file} is missing")
        self.onnx_file = onnx_path.name
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # ORT's own warnings would otherwise go to stderr of every CLI command
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = providers or pick_providers()
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=wanted)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"bundle {bundle_dir}: cannot load {onnx_path.name}: {msg}") from None
        log.info("bundle %s: %s on %s", self.manifest.version, onnx_path.name, ", ".join(self.session.get_providers()))
        if "CUDAExecutionProvider" in wanted and "CUDAExecutionProvider" not in self.session.get_providers():
            log.warning("CUDA was requested but ONNX Runtime fell back to CPU for %s", onnx_path.name)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise BundleError(f"bundle {bundle_dir}: {onnx_path.name} must have one input and an output, "
                              f"has {len(inputs)} and {len(outputs)}")
        if inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4:
            raise BundleError(f"bundle {bundle_dir}: {onnx_path.name} input is {inputs[0].type} "
                              f"{inputs[0].shape}, expected uint8 [N, S, S, 3]")
        inp, out = inputs[0], outputs[0]
        self.input_name, self.output_name = inp.name, out.name
        dim = out.shape[-1]
        if isinstance(dim, int) and dim != self.manifest.embedding_dim:
            raise BundleError(
                f"bundle {bundle_dir}: ONNX output dim {dim} != manifest embedding_dim {self.manifest.embedding_dim}"
            )
        size = inp.shape[1]
        if isinstance(size, int) and size != self.manifest.input_size:
            raise BundleError(
                f"bundle {bundle_dir}: ONNX input size {size} != manifest input_size {self.manifest.input_size}"
            )

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def dim(self) -> int:
        return int(self.manifest.embedding_dim)

    @property
    def input_size(self) -> int:
        return int(self.manifest.input_size)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def embed_many(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """Any number of images in model batches of ``batch`` (no single giant ONNX call) → float32 ``[N, D]``."""
        if batch <= 0:
            raise ValueError(f"batch size must be positive, got {batch}")
        out = [self.embed(images[i:i + batch]) for i in range(0, len(images), batch)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N, S, S, 3]`` → float32 ``[N, D]``, unit L2 norm."""
        s = self.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"expected uint8 [N, {s}, {s}, 3], got {images.dtype} {list(images.shape)}")
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(images)})[0]
        out = out.astype(np.float32, copy=False)
        if out.shape != (len(images), self.dim):
            raise BundleError(f"bundle {self.bundle_dir}: ONNX output shape {list(out.shape)} != "
                              f"[{len(images)}, {self.dim}] from the manifest")
        if not self.manifest.normalized:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
