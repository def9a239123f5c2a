"""Which CPU a figure was measured on (torch-free; reads torch's dispatch level only when torch is already loaded).

Two "2 vCPU x86-64" machines differ where it matters: with avx512_bf16 / AMX, bf16 autocast is native and about
twice as fast as fp32; without them PyTorch emulates it, 5-13× slower. Every benchmark JSON and every training
run's ``summary.json`` carry :func:`cpu_info`, so no figure is quoted without the machine it holds on.
"""

from __future__ import annotations

import os
import platform
import sys

FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
# Environment variables that change which kernels run (the AVX2 imitation of ../shared/ENVIRONMENT.md among them).
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "OMP_WAIT_POLICY")


def cpu_info() -> dict:
    """The CPU a figure was measured on: model name, the flags that decide which kernels run (bf16 is native only
    with avx512_bf16 / AMX; without them PyTorch emulates it, 5-13× slower), torch's dispatch level and threads,
    and the kernel-selecting environment variables set for the run. Two "2 vCPU x86-64" boxes differ by these."""
    model, flags = "?", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "?":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        model = platform.processor() or "?"
    info = {"model": model, "flags": {f: f in flags for f in FLAGS_THAT_MATTER},
            "env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ}}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_threads"] = torch.get_num_threads()
    return info


def cpu_line(info: dict | None = None) -> str:
    """``CPU: <model>, avx2 avx512_bf16 amx_bf16, torch AVX512, 2 threads`` for a benchmark's table."""
    info = info or cpu_info()
    flags = " ".join(f for f, on in info["flags"].items() if on) or "no AVX2"
    env = "".join(f" {k}={v}" for k, v in info["env"].items())
    torch_part = f", torch {info['torch_capability']}, {info['torch_threads']} threads" if "torch_capability" in info \
        else ""
    return f"CPU: {info['model']}, {flags}{torch_part}{env}"
