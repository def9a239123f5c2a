#!/usr/bin/env bash
# One command for a GPU box that has only torch + torchvision (+ numpy, scipy, pillow, tqdm, tensorboard) and the
# Fashion-MNIST IDX files (31 MB: carry them). Runs, into bench/results/*_cuda.json (or $OUT when set):
#   1. the CUDA tests: no host sync inside a training step (torch.cuda.set_sync_debug_mode("error")), views on device;
#   2. training throughput, ours (batched on-device augmentation) vs the reference per-image loop, same model/batch;
#   3. the 10-minute Fashion-MNIST run (preset fmnist-gpu) with its kNN curve, scored on the standard protocol.
# usage: bash bench/gpu.sh [FASHION_MNIST_DIR]        (default /usr/share/datasets/fashion-mnist, else .data/fmnist)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
DATA=${1:-/usr/share/datasets/fashion-mnist}
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || DATA=.data/fmnist
RESULTS=${OUT:-bench/results}
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -m pytest -q -p no:cacheprovider tests/training/test_cuda.py 2>&1 | tee "$RESULTS/cuda_tests.log" | tail -3
"$PY" -m bench.train_throughput --device cuda --batch 512 --cifar-batch 512 --out "$RESULTS/train_throughput_cuda.json"
"$PY" -m bench.gpu_run --data-root "$DATA" --out "$RESULTS/fmnist_gpu_cuda.json"
