"""`python -m gateway.runtime start|stop|status [--local] NAME...`: what start-service.sh and
stop-service.sh run. Without --local the Docker (compose) runtime is used."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from gateway.configs import ConfigError
from gateway.runtime import local


def docker_runtime():
    try:
        return importlib.import_module("gateway.runtime.docker")
    except ModuleNotFoundError as e:
        if e.name != "gateway.runtime.docker":
            raise
        raise local.StartError(
            "the Docker path is not there yet in this checkout; use --local for the CPU configs"
        ) from None


def print_usage_hint(state: dict) -> None:
    gw = state.get("gateway") or {}
    url = gw.get("url", "http://127.0.0.1:8080")
    names = ", ".join(state.get("services", {})) or "none"
    print(f"\nGateway: {url}   running configs: {names}", file=sys.stderr)
    print(f"  OpenAI:  curl {url}/v1/models", file=sys.stderr)
    print(f"  Ollama:  OLLAMA_HOST={url} ollama list   (or curl {url}/api/tags)", file=sys.stderr)
    print("  Try:     ./request-service-openai-text.sh <model> 'Hello'", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.runtime")
    p.add_argument("command", choices=["start", "stop", "status"])
    p.add_argument("names", nargs="*")
    p.add_argument("--local", action="store_true", help="run as local processes (CPU configs, no Docker)")
    p.add_argument("--all", action="store_true", help="stop: every running config and the gateway")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--no-preload", action="store_true", help="start: let LLMs load on their first request")
    args = p.parse_intermixed_args(argv)  # options may come before or after the names
    if args.command in ("start", "stop") and not args.names and not args.all:
        p.error(f"{args.command} needs at least one config name (python -m gateway.configs list)")
    try:
        runtime = local if args.local else docker_runtime()
        if args.command == "start":
            opts = local.Options(quiet=args.quiet, preload=not args.no_preload)
            state = runtime.start(args.names, opts=opts)
            print_usage_hint(state)
        elif args.command == "stop":
            runtime.stop(args.names, opts=local.Options(quiet=args.quiet), all_=args.all)
        else:
            print(json.dumps(runtime.status(), indent=1))
    except (ConfigError, local.StartError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
