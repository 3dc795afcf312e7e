#!/usr/bin/env bash
# The one test command: installs everything this project needs on a fresh Debian machine (apt + pip)
# and runs every test. Usage: ./tests/run.sh [pytest args...]
# Its summary says what ran for real and what was only validated (GPU-only paths cannot run here).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
step() { echo; echo "=== $* ($((SECONDS - t0)) s)"; }

step "system packages (apt): $(tr '\n' ' ' < tests/apt-packages.txt)"
if [ "$(id -u)" = 0 ]; then
  missing=$(while read -r p; do [ -n "$p" ] && ! dpkg -s "$p" >/dev/null 2>&1 && echo "$p"; done < tests/apt-packages.txt || true)
  if [ -n "$missing" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
else
  echo "not root: skipping apt (install $(tr '\n' ' ' < tests/apt-packages.txt) yourself)"
fi

step "python environments (one per engine kind)"
services/setup-env.sh gateway llm image vision

step "lint (ruff)"
.venvs/gateway/bin/ruff check .

step "tests"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
set +e
.venvs/gateway/bin/python -m pytest --durations=25 "$@"
rc=$?
set -e
echo "=== done in $((SECONDS - t0)) s (pytest exit $rc)"
[ $rc = 5 ] && { echo "no tests were collected"; exit 1; }
exit $rc
