"""Export f_θ to a self-describing ONNX bundle and prove, on real images, that serving computes what torch did.

The graph takes exactly what :func:`serving.contract.image.load` gives (uint8 NHWC ``[N, S, S, 3]``) and does the rest
itself: ``/255``, NHWC→NCHW, the encoder (mean/std are its buffers), L2 normalisation. So no normalisation
constant exists outside the bundle, and the parity check runs the *serving* path (PNG bytes → ``image.load`` →
ONNX Runtime) against PyTorch on the same pixels.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from serving.contract import image as image_contract
from serving.contract.atomic import atomic_publish_dir
from serving.contract.bundle import Manifest, new_version, now_iso, write_bundle
from training.networks import Encoder

log = logging.getLogger(__name__)

OPSET = 20
MAX_BATCH = 4096
FP16_FILE = "encoder_fp16.onnx"
FP16_ATOL = 2e-2  # fp16 weights/activations: ~3 decimal digits, on unit-norm vectors
FP16_MIN_COSINE = 0.999
INT8_FILE = "encoder_int8.onnx"
INT8_ATOL = 0.1  # int8 weights and activations: measured max |diff| 2e-3..3e-2 on unit-norm vectors (bench)
INT8_MIN_COSINE = 0.99
N_SYNTHETIC = 16  # parity images made when the caller gives none (a warning says so)
# Batch 1 vs batch N of one graph: bit-equal with the data set's normalisation. With each image's own
# (``encoder.input_norm='image'``) ONNX Runtime's basic graph optimisations make the vectors batch-dependent at float
# rounding (with optimisations off, bit-equal again): 2.6e-5 on unit vectors at random init, 1.7e-4 after a 4-step
# retrain of a width-8 test encoder (a trained width-16 encoder passed 1e-4). That graph is held to this bound.
IMAGE_NORM_BATCH_ATOL = 1e-3


class ExportError(RuntimeError):
    """The ONNX graph does not reproduce the PyTorch encoder (or could not be built)."""


class ServingGraph(nn.Module):
    """uint8 NHWC pixels → unit-norm embeddings: the whole model as serving sees it."""

    def __init__(self, encoder: Encoder, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.encoder = encoder
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).div(255.0).permute(0, 3, 1, 2)
        z = self.encoder(x).float()
        return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _onnx_bytes(graph: nn.Module, size: int) -> bytes:
    """torch 2.13's dynamo exporter: one self-contained file, dynamic batch (ENVIRONMENT.md)."""
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)  # batch 2: 1 would be specialised away
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with tempfile.TemporaryDirectory(prefix="byol-export-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "encoder.onnx"
        try:
            program = torch.onnx.export(
                graph, (example,), input_names=["images"], output_names=["embeddings"],
                dynamo=True, external_data=False, opset_version=OPSET,
                dynamic_shapes={"x": {0: batch}}, verbose=False,
            )
            program.save(str(path), external_data=False)
        except Exception as exc:
            raise ExportError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        return path.read_bytes()


def _opset(onnx_bytes: bytes) -> int:
    """The default-domain opset the exporter really wrote (it may raise the requested one)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def parity_batch(size: int, images: np.ndarray | None = None, files: Sequence[Path] | None = None) -> tuple[
        np.ndarray, str]:
    """Model inputs made the way serving makes them (encoded bytes → ``image.load``), plus where they came from."""
    blobs: list[bytes] = []
    sources = []
    if images is not None and len(images):
        imgs = np.asarray(images)
        if imgs.dtype != np.uint8 or imgs.ndim not in (3, 4):
            raise ExportError(f"parity_images must be uint8 [N,H,W] or [N,H,W,3], got {imgs.dtype} {imgs.shape}")
        blobs += [_png(im) for im in imgs]
        sources.append(f"{len(imgs)} arrays via PNG")
    if files:
        for f in files:
            try:
                blobs.append(Path(f).read_bytes())
            except OSError as exc:
                raise ExportError(f"cannot read parity file {f}: {exc.strerror}") from None
        sources.append(f"{len(files)} files")
    if not blobs:
        log.warning("no parity images given: checking parity on %d synthetic images", N_SYNTHETIC)
        rng = np.random.default_rng(0)
        blobs = [_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(N_SYNTHETIC)]
        sources.append(f"{N_SYNTHETIC} synthetic noise images")
    try:
        return image_contract.load_batch(blobs, size), ", ".join(sources)
    except image_contract.ImageError as exc:
        raise ExportError(f"parity image unusable: {exc}") from None


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Max absolute difference and the worst per-row cosine between two embedding matrices."""
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cos = (ref * cand).sum(axis=1) / np.maximum(norms, 1e-12)
    return {"max_abs_diff": float(np.abs(ref - cand).max()), "min_cosine": float(cos.min())}


def _check(name: str, figures: dict, atol: float, min_cosine: float) -> None:
    if not (figures["max_abs_diff"] <= atol and figures["min_cosine"] >= min_cosine):
        raise ExportError(
            f"{name} parity failed: max |ONNX - PyTorch| = {figures['max_abs_diff']:.3g} (limit {atol:g}), "
            f"min cosine = {figures['min_cosine']:.6f} (limit {min_cosine:g}) over {figures['n_images']} images"
        )


def _onnx_embed(bundle_dir: Path, batch: np.ndarray, onnx_file: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embed ``batch`` in one call and one image at a time (the graph must not depend on batch size)."""
    from serving.contract.encoder import OnnxEncoder

    enc = OnnxEncoder(bundle_dir, intra_op_threads=1, onnx_file=onnx_file)
    whole = enc.embed(batch)
    singles = np.concatenate([enc.embed(batch[i:i + 1]) for i in range(len(batch))])
    return whole, singles


def _parity(bundle_dir: Path, graph: ServingGraph, batch: np.ndarray, source: str, atol: float,
            min_cosine: float, onnx_file: str | None = None) -> dict:
    with torch.inference_mode():
        reference = graph(torch.from_numpy(batch)).float().numpy()
    whole, singles = _onnx_embed(bundle_dir, batch, onnx_file)
    figures = compare(reference, whole) | {"n_images": len(batch), "images": source, "atol": atol,
                                           "min_cosine_required": min_cosine}
    figures["batch_1_vs_n_max_abs_diff"] = compare(whole, singles)["max_abs_diff"]
    name = onnx_file or "ONNX"
    _check(name, figures, atol, min_cosine)
    batch_atol = max(atol, IMAGE_NORM_BATCH_ATOL) if graph.encoder.cfg.input_norm == "image" else atol
    figures["batch_atol"] = batch_atol
    if figures["batch_1_vs_n_max_abs_diff"] > batch_atol:
        raise ExportError(f"{name}: batch size changes the vectors: max diff "
                          f"{figures['batch_1_vs_n_max_abs_diff']:.3g} between batch 1 and {len(batch)}")
    return figures


def export_bundle(encoder: Encoder, out_dir: Path, *, meta: dict | None = None,
                  parity_images: np.ndarray | None = None, parity_files: list[Path] | None = None,
                  parent_version: str | None = None, fp16: bool = False, int8: bool = False, atol: float = 1e-4,
                  min_cosine: float = 0.9999) -> Manifest:
    """Write ``out_dir`` (must not exist) as a bundle, atomically, only if ONNX matches PyTorch.

    ``meta`` (from :func:`training.artifact.load_encoder`) may carry ``config``/``training_config``,
    ``data_fingerprint``, ``metrics`` and ``parent_version``; they are copied into the manifest.
    Raises :class:`ExportError` with the parity figures when the graph disagrees with torch.
    ``fp16`` / ``int8`` add ``encoder_fp16.onnx`` (GPU serving) / ``encoder_int8.onnx`` (CPU serving, ~2x the
    fp32 graph's speed at 224 px) beside ``encoder.onnx``, each with its own looser parity bound; the manifest's
    ``extra_files`` lists them and ``parity`` holds their figures. Neither is served unless asked for
    (``BYOL_ENCODER_FILE``).
    """
    meta = dict(meta or {})
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ExportError(f"output directory {out_dir} already exists (bundles are immutable)")
    was_training = encoder.training
    device = next(encoder.parameters()).device  # a trainer may hand over its CUDA model: give it back there
    encoder = encoder.cpu().eval()
    size = int(encoder.cfg.input_size)
    try:
        batch, source = parity_batch(size, parity_images, parity_files)  # bad inputs fail before the slow part
        graph = ServingGraph(encoder).eval()
        onnx_bytes = _onnx_bytes(graph, size)
        manifest = Manifest(
            version=new_version(onnx_bytes), embedding_dim=int(encoder.out_dim), input_size=size,
            architecture=encoder.cfg.to_dict(), onnx_sha256="", normalized=True, opset=_opset(onnx_bytes),
            training_config=meta.get("training_config") or meta.get("config") or {},
            data_fingerprint=str(meta.get("data_fingerprint") or ""),
            parent_version=parent_version or meta.get("parent_version"),
            metrics=meta.get("metrics") or {}, created_at=now_iso(),
        )

        def build(tmp: Path) -> None:
            write_bundle(tmp, onnx_bytes, manifest)
            manifest.parity = {"fp32": _parity(tmp, graph, batch, source, atol, min_cosine)}
            if fp16:
                manifest.parity["fp16"] = _export_fp16(tmp, encoder, size, batch, source)
                manifest.extra_files[FP16_FILE] = manifest.parity["fp16"]["sha256"]
            if int8:
                manifest.parity["int8"] = _export_int8(tmp, manifest.onnx_file, encoder, batch, source)
                manifest.extra_files[INT8_FILE] = manifest.parity["int8"]["sha256"]
            write_bundle(tmp, onnx_bytes, manifest)  # again, now with the parity figures

        atomic_publish_dir(build, out_dir)
    finally:
        encoder.to(device).train(was_training)
    p = manifest.parity["fp32"]
    log.info("exported %s to %s: dim %d, parity max diff %.2e, min cosine %.6f on %s", manifest.version, out_dir,
             manifest.embedding_dim, p["max_abs_diff"], p["min_cosine"], p["images"])
    return manifest


def _export_fp16(bundle_dir: Path, encoder: Encoder, size: int, batch: np.ndarray, source: str) -> dict:
    """A half-precision twin for GPU serving; checked against the fp32 PyTorch encoder with a looser bound."""
    import copy

    half = copy.deepcopy(encoder).half().eval()
    data = _onnx_bytes(ServingGraph(half, torch.float16).eval(), size)
    (bundle_dir / FP16_FILE).write_bytes(data)
    return _parity(bundle_dir, ServingGraph(encoder).eval(), batch, source, FP16_ATOL, FP16_MIN_COSINE,
                   onnx_file=FP16_FILE) | {"file": FP16_FILE, "sha256": hashlib.sha256(data).hexdigest()}


class _Calibration:
    """ONNX Runtime's calibration reader over uint8 model inputs, a few images a call."""

    def __init__(self, batch: np.ndarray, step: int = 16) -> None:
        self._chunks = iter([{"images": batch[i:i + step]} for i in range(0, len(batch), step)])

    def get_next(self) -> dict | None:
        return next(self._chunks, None)


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray) -> None:
    """Static int8 of an fp32 serving graph: QDQ, weights int8 per output channel, activations uint8 with ranges
    (min/max) calibrated on ``calibration`` (uint8 model inputs). Static because ONNX Runtime's *dynamic* int8
    turns each Conv into ConvInteger, which measured ~6x slower than fp32 on CPU; static QDQ becomes QLinearConv
    (VNNI on x86). Convolutions and matrix products only: the uint8 input, the normalisation and the final L2
    norm stay float."""
    import onnxruntime.quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="byol-int8-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        q.quantize_static(str(pre), str(out_path), _Calibration(calibration), quant_format=q.QuantFormat.QDQ,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8, per_channel=True,
                          op_types_to_quantize=["Conv", "MatMul", "Gemm"])


def _export_int8(bundle_dir: Path, onnx_file: str, encoder: Encoder, batch: np.ndarray, source: str) -> dict:
    """The int8 twin, calibrated on the parity images and checked against the fp32 PyTorch encoder."""
    try:
        quantize_int8(bundle_dir / onnx_file, bundle_dir / INT8_FILE, batch)
    except Exception as exc:
        raise ExportError(f"int8 quantisation failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    figures = _parity(bundle_dir, ServingGraph(encoder).eval(), batch, source, INT8_ATOL, INT8_MIN_COSINE,
                      onnx_file=INT8_FILE)
    return figures | {"file": INT8_FILE, "sha256": hashlib.sha256((bundle_dir / INT8_FILE).read_bytes()).hexdigest(),
                      "method": "static QDQ: int8 weights per channel, uint8 activations (min/max)",
                      "calibration": source}


def export_to_temp(encoder: Encoder, **kwargs) -> tuple[Path, Manifest]:
    """Export into a fresh temporary directory (the CLI registers it, then deletes it)."""
    parent = Path(tempfile.mkdtemp(prefix="byol-bundle-"))
    try:
        out = parent / "bundle"
        return out, export_bundle(encoder, out, **kwargs)
    except BaseException:
        shutil.rmtree(parent, ignore_errors=True)
        raise

