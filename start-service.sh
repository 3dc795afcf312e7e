#!/usr/bin/env bash
# Start one or more configs and the gateway in front of them.
#   ./start-service.sh --local tiny-llm [all-minilm ...]   local processes, CPU configs, no Docker
#   ./start-service.sh <config-name>...                     containers (Docker + Compose v2)
# Configs: python -m gateway.configs list   (or ls configs/)
set -euo pipefail
cd "$(dirname "$0")"
services/setup-env.sh --quiet gateway
exec .venvs/gateway/bin/python -m gateway.runtime start "$@"
