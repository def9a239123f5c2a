"""Stage 1 of ``bench/gpu.sh``: where the run happens — the GPU as ``nvidia-smi`` and torch see it, CUDA and cuDNN,
and the version of every package the later stages import.

Written first and in seconds, so that a run cut short (a stage over its timeout, the device call over its limit)
still says which machine its other figures came from; versions matter here because the GPU box's stack (Python
3.12, torch 2.11 + CUDA 13) is not the project's (../shared/ENVIRONMENT.md, "GPU machine").

    python -m bench.gpu_env --out gpu_env.json
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from importlib import metadata

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "pillow", "tqdm", "tensorboard", "pytest", "pyyaml",
            "matplotlib", "onnx", "onnxruntime", "bentoml", "faiss-cpu")  # the last two: expected absent there
SMI_FIELDS = ("name", "memory.total", "driver_version", "clocks.max.sm", "power.limit", "temperature.gpu",
              "utilization.gpu", "memory.used")


def versions() -> dict[str, str | None]:
    """Installed distribution versions (``None``: not installed), read without importing anything."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def nvidia_smi() -> list[dict] | None:
    """One dict per GPU from ``nvidia-smi --query-gpu`` (``None`` where there is no ``nvidia-smi``)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        text = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        return [{"error": str(exc)}]
    return [dict(zip(SMI_FIELDS, (v.strip() for v in line.split(",")), strict=False))
            for line in text.splitlines() if line.strip()]


def smi_table() -> str:
    """``nvidia-smi``'s own table (clocks, power, processes), for the log."""
    try:
        return subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        return f"nvidia-smi: {exc}"


def code_version() -> dict:
    """The commit the run's tree came from and how many files differ from it (``None`` where no git travelled)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True).stdout
        except (subprocess.SubprocessError, OSError):
            return None

    head, status = git("rev-parse", "HEAD"), git("status", "--porcelain")
    return {"commit": head.strip() if head else None,
            "changed_files": len(status.splitlines()) if status is not None else None}


def cuda() -> dict:
    """What torch sees: CUDA and cuDNN versions, the device, its memory and whether it does bf16 natively."""
    import torch

    info = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if info["available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(devices=torch.cuda.device_count(), name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                    bf16=torch.cuda.is_bf16_supported())
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_env", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON path")
    args = p.parse_args(argv)
    from bench.gpu_common import write

    smi = nvidia_smi()
    if smi is not None:
        print(smi_table())
    payload = {"versions": versions(), "nvidia_smi": smi, "cuda": cuda(), "code": code_version()}
    write(args.out, "gpu_env", payload)
    gpu = payload["cuda"].get("name") or "no CUDA device"
    print(f"{gpu}; torch {payload['versions']['torch']} (CUDA {payload['cuda']['torch_cuda']}, cuDNN "
          f"{payload['cuda']['cudnn']}), torchvision {payload['versions']['torchvision']}, numpy "
          f"{payload['versions']['numpy']}  → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
