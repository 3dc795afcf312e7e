#!/usr/bin/env bash
# Builds services/image/csrc/build/libmodelplat_fmha.so (Hopper attention, see fmha.cu) with nvcc.
# CUTLASS's headers and its FMHA example come from the nvidia-cutlass wheel (the C++ source is inside it);
# CUTLASS_DIR may name an unpacked copy instead. Needs CUDA >= 12.3's nvcc; about a minute on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/build/libmodelplat_fmha.so}
cutlass_version=4.2.0.0
if [[ -z "${CUTLASS_DIR:-}" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "nvidia-cutlass==$cutlass_version"
  python3 -m zipfile -e "$tmp"/nvidia_cutlass-*.whl "$tmp/whl"
  CUTLASS_DIR=$tmp/whl/cutlass_library/source
fi
mkdir -p "$(dirname "$out")"
rm -f "$out"
"${NVCC:-nvcc}" -std=c++17 -O3 -DNDEBUG -arch=sm_90a --expt-relaxed-constexpr --use_fast_math \
  -Xcompiler -fPIC -shared -I"$CUTLASS_DIR/include" -I"$CUTLASS_DIR/examples/88_hopper_fmha" \
  -o "$out" "$here/fmha.cu" 2>&1 | grep -v "Potential Performance Loss" || true
test -s "$out"
echo "$out"
