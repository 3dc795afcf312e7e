#!/usr/bin/env bash
# Stop configs started by start-service.sh; the gateway stops with the last one.
#   ./stop-service.sh --local tiny-llm      ./stop-service.sh <config-name>      ./stop-service.sh [--local] --all
set -euo pipefail
cd "$(dirname "$0")"
services/setup-env.sh --quiet gateway
exec .venvs/gateway/bin/python -m gateway.runtime stop "$@"
