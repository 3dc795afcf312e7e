#!/usr/bin/env bash
# Every step of a GPU run of the image service, on a machine with CUDA PyTorch (the lent H100: torch 2.11,
# no diffusers/torchao there, so their wheels travel in .whl/). Logs go to $OUT (or /tmp/image-gpu).
#
#   bash benchmarks/image_gpu_run.sh tests attention profile images
#
# Steps: tests (GPU tests of services/image), attention (benchmarks/image_gpu_attention.py), plans
# (benchmarks/image_gpu_cudnn_plans.py: every cuDNN SDPA plan), qknorm (benchmarks/image_gpu_qknorm.py), grouped
# (benchmarks/image_gpu_grouped.py: double blocks' two streams in one grouped GEMM), memsets
# (benchmarks/image_gpu_memsets.py: which library calls put memsets in the graph, then with cuBLAS's workspaces
# off), vae (benchmarks/image_gpu_vae.py: ways to compile the VAE decode; VAE_GN=1 session 9's rewrites A/B/A,
# VAE_SERVICE=1 the service's alone, VAE_CHECK=1 / VAE_TUNE=1 / VAE_LAYOUT=1 other sets), other (benchmarks/image_gpu_other.py: a FLUX
# image outside its steps), gaps (the same, bf16: where the GPU idles in one image), profile (FLUX forwards
# of $VARIANTS, kernels by name), images (full FLUX + Ovis fp8 images, then without modulation tables in the
# same engine), bf16 (FLUX bf16 images, the same), restart (first image in a new process).
# ANCHOR=1 (bf16): first measure the board as the issue measured its H100 (image_gpu.py --anchor).
# CLOCKS=1: sample the GPU's clock, power and throttle reasons meanwhile (summary at the end).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/image-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader

if [ -n "${CLOCKS:-}" ]; then  # sample SM clock, power and throttle reasons while the steps run
  nvidia-smi --query-gpu=clocks.sm,power.draw,power.limit,temperature.gpu,clocks_event_reasons.active \
    --format=csv,noheader,nounits -lms 500 > "$OUT/clocks.csv" &
  CLOCKS_PID=$!
  trap 'kill $CLOCKS_PID 2>/dev/null' EXIT
fi

run() {  # name, command...: log to $OUT/<name>.log, keep going on failure
  local name=$1; shift
  echo "=== $name: $*"
  local t=$SECONDS rc n0
  n0=$(cat "$OUT/clocks.csv" 2>/dev/null | wc -l)
  "$@" 2>&1 | tee "$OUT/$name.log" | grep -v "^\s*$" | tail -n "${TAIL:-40}"
  rc=${PIPESTATUS[0]}
  if [ -n "${CLOCKS:-}" ]; then
    tail -n +$((n0 + 1)) "$OUT/clocks.csv" > "/tmp/clocks_$name.csv"
    python3 benchmarks/image_gpu_clocks.py "/tmp/clocks_$name.csv"
  fi
  echo "=== $name: exit $rc after $((SECONDS - t)) s"
}

for step in "$@"; do
  case $step in
    tests) run tests python3 -m pytest -q -p no:cacheprovider -o addopts= services/image/test_engine.py \
             -k "gpu" -rfEs ;;
    attention) run attention python3 benchmarks/image_gpu_attention.py ;;
    plans) run plans python3 benchmarks/image_gpu_cudnn_plans.py ;;
    qknorm) run qknorm python3 benchmarks/image_gpu_qknorm.py ;;
    grouped) run grouped python3 benchmarks/image_gpu_grouped.py ;;
    memsets) run memsets python3 benchmarks/image_gpu_memsets.py
             CUBLASLT_WORKSPACE_SIZE=0 run memsets-lt0 python3 benchmarks/image_gpu_memsets.py
             CUBLASLT_WORKSPACE_SIZE=0 CUBLAS_WORKSPACE_CONFIG=:0:0 run memsets-both0 \
               python3 benchmarks/image_gpu_memsets.py ;;
    vae) run vae python3 benchmarks/image_gpu_vae.py ;;
    other) TAIL=${TAIL:-90} run other python3 benchmarks/image_gpu_other.py --variants ;;
    gaps) run gaps python3 benchmarks/image_gpu_other.py --mode bf16 --gaps ${STACKS:+--stacks} ;;
    profile) PROFILE_TOP=${PROFILE_TOP:-12} run profile python3 benchmarks/image_gpu_profile.py --family flux \
               --variants "${VARIANTS:-bf16-mlp-persist-graph-table,bf16-mlp-persist-graph,fp8-mlp-persist-graph-table,fp8-mlp-persist-graph}" ;;
    images) run images python3 benchmarks/image_gpu.py --family both --mode fp8 --cfg-pair --skip-baseline \
              --tables-too ;;
    bf16) run bf16 python3 benchmarks/image_gpu.py --family flux --mode bf16 --skip-baseline --tables-too \
            ${ANCHOR:+--anchor} ;;
    restart) run restart python3 benchmarks/image_gpu.py --family flux --mode fp8 --skip-baseline --images 1 \
               --restart ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
