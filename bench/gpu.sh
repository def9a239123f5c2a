#!/usr/bin/env bash
# The GPU proof in one command of ~8 minutes on one H200 (issue 19; the `device` call is in bench/README.md, "gpu.sh").
# Stages, most telling first so that a cut leaves the most; each writes its JSON into $OUT the moment it ends:
#   env         nvidia-smi, CUDA/cuDNN, package versions                 gpu_env.json         (seconds)
#   cuda_tests  tests/training/test_cuda.py: no host sync in a step, ...  gpu_cuda_tests.json  (≤ 1 min)
#   throughput  ours vs the reference per-image loop, fmnist-gpu model    gpu_throughput.json  (≤ 1 min)
#   train       the fmnist-gpu run, 5 minutes of training                 gpu_train.json       (~5.5 min)
#   eval        standard protocol on its encoder: 60k bank, kNN@20/200,   gpu_eval.json        (≤ 1 min)
#               bounded probe, raw pixels
# plus gpu_stages.json (each stage's exit status, seconds, timeout) and gpu.log (everything printed).
# Each stage runs under `timeout`: its own cap, shortened so that the later stages keep their floor inside TOTAL
# seconds (570: the device tool's 600-second command limit less a margin). A stage that hangs or fails costs its own
# figures only; the exit status is 1 when any stage failed.
#
# usage: bash bench/gpu.sh [FASHION_MNIST_DIR]    (default /usr/share/datasets/fashion-mnist, else .data/fmnist)
#        bash bench/gpu.sh --smoke [DIR]          the same stages on the CPU with tiny budgets (< 1 min; make test)
# env:   OUT (results; default runs/gpu, runs/gpu-smoke), PYTHON (default .venv/bin/python, else python3)
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
if [ "${1:-}" = --smoke ]; then SMOKE=1; shift; fi
DATA=${1:-/usr/share/datasets/fashion-mnist}
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || DATA=.data/fmnist
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH=. PYTHONUNBUFFERED=1
if [ "$SMOKE" = 1 ]; then
  RESULTS=${OUT:-runs/gpu-smoke}; RUN=$RESULTS/run; TOTAL=300
  # name: cap_s floor_s (the floor is what a later stage is left at least, when an earlier one hangs)
  CAPS=(env 60 0 cuda_tests 90 0 throughput 90 0 train 120 0 eval 90 0)
  NET=(--set encoder.width=8 --set heads.projector_hidden=32 --set heads.out_dim=16 --set heads.predictor_hidden=32
       --set train.batch_size=32)
  THROUGHPUT=("${NET[@]}" --budget 1 --aug-budget 0.5)
  TRAIN=("${NET[@]}" --minutes 0.1 --set data.max_images=2048 --set train.calibrate_after=2
         --set train.calibrate_steps=3 --set train.knn_every=10 --set train.knn_max_train=500
         --set train.knn_max_holdout=250 --set train.checkpoint_every=50)
  EVAL=(--budget 6 --max-train 2000 --max-test 500 --batch 256)
else
  RESULTS=${OUT:-runs/gpu}; RUN=runs/gpu-run; TOTAL=570
  CAPS=(env 45 5 cuda_tests 75 20 throughput 75 30 train 375 330 eval 75 60)
  THROUGHPUT=(--budget 20 --aug-budget 5)
  TRAIN=(--minutes 5)
  EVAL=(--budget 55)
fi
mkdir -p "$RESULTS"
rm -f "$RESULTS"/gpu_*.json "$RESULTS/gpu.log"
GPU=$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) || GPU=""
START=$(date +%s)
FAILED=0

limit() {  # limit NAME: the stage's cap, or less where the later stages' floors would not fit in TOTAL otherwise
  local i later=0 cap=0 found=0
  for ((i = 0; i < ${#CAPS[@]}; i += 3)); do
    if [ "$found" = 1 ]; then later=$((later + CAPS[i + 2])); fi
    if [ "${CAPS[i]}" = "$1" ]; then cap=${CAPS[i + 1]}; found=1; fi
  done
  local left=$((START + TOTAL - later - $(date +%s)))
  echo $((cap < left ? cap : left))
}

stage() {  # stage NAME CMD...: CMD under its timeout, its exit status and seconds recorded in gpu_stages.json
  local name=$1 t rc t0 ms
  shift
  t=$(limit "$name")
  t0=$(date +%s%N)
  if [ "$t" -lt 5 ]; then
    echo "== $name: skipped, no time left"
    rc=125
  else
    echo "== $name (timeout ${t} s, $(($(date +%s) - START)) s in): $*"
    timeout --kill-after=10 "$t" "$@"
    rc=$?
  fi
  ms=$((($(date +%s%N) - t0) / 1000000))
  echo "== $name: exit $rc after $((ms / 1000)).$((ms % 1000 / 100)) s"
  [ "$rc" = 0 ] || FAILED=1
  "$PYTHON" -m bench.gpu_stages "$RESULTS/gpu_stages.json" "$name" "$rc" "$((ms / 1000)).$(printf %03d $((ms % 1000)))" \
    "$t" --gpu "$GPU" $([ "$SMOKE" = 1 ] && echo --smoke) || FAILED=1
}

main() {
  echo "== bench/gpu.sh$([ "$SMOKE" = 1 ] && echo ' --smoke'): data $DATA, python $PYTHON, results $RESULTS, gpu ${GPU:-none}"
  stage env "$PYTHON" -m bench.gpu_env --out "$RESULTS/gpu_env.json"
  stage cuda_tests "$PYTHON" -m bench.gpu_tests --out "$RESULTS/gpu_cuda_tests.json"
  stage throughput "$PYTHON" -m bench.gpu_throughput "${THROUGHPUT[@]}" --out "$RESULTS/gpu_throughput.json"
  stage train "$PYTHON" -m bench.gpu_run --data-root "$DATA" --run "$RUN" "${TRAIN[@]}" --set train.progress=false \
    --out "$RESULTS/gpu_train.json"
  stage eval "$PYTHON" -m bench.gpu_eval --encoder "$RUN/encoder.pt" --data-root "$DATA" "${EVAL[@]}" \
    --out "$RESULTS/gpu_eval.json"
  echo "== done in $(($(date +%s) - START)) s; $([ "$FAILED" = 0 ] && echo 'every stage passed' || echo 'a stage FAILED')"
  return "$FAILED"
}

main 2>&1 | tee -a "$RESULTS/gpu.log"
exit "${PIPESTATUS[0]}"
