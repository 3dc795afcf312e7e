"""Container entrypoint without the lifecycle: `python -m services.llm.entrypoint --config NAME`.

Builds the `vllm serve` command line from the config and exec()s it, so the container process *is*
vLLM's own OpenAI server (signals, exit codes and logs are vLLM's). Used when LLM_LIFECYCLE=off, e.g.
for an always-on production model (idle_timeout_s 0) that never needs an admin unload.
`--print` shows the command and environment instead of running it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from gateway.configs import load_catalog
from services.llm.argv import resolve_checkpoint, vllm_argv, vllm_env
from services.llm.process import vllm_executable
from services.llm.supervisor import models_dir


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.llm.entrypoint", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.environ.get("CONFIG_NAME"), help="config name (env CONFIG_NAME)")
    p.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")) or None,
                   help="env PORT; default: the config's container port (8000)")
    p.add_argument("--print", action="store_true", help="print the command instead of exec'ing it")
    a, _ = p.parse_known_args(argv)  # tolerate the supervisor's flags (LLM_LIFECYCLE=off reuses its command)
    if not a.config:
        p.error("--config NAME (or env CONFIG_NAME) is required")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    cfg = load_catalog().require(a.config)
    model_path = resolve_checkpoint(cfg, models_dir())
    cmd = vllm_argv(cfg, a.host, a.port or cfg.port, model_path)
    env = vllm_env(cfg, model_path)
    if a.print:
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(cmd))
        return 0
    if cfg.model.build and not os.path.exists(model_path):
        from pathlib import Path

        from services.llm.build import build

        build(cfg.model.build, Path(model_path))
    exe = vllm_executable()
    sys.stdout.flush()
    os.execvpe(exe, [exe, *cmd[1:]], {**os.environ, **env})
    return 127  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
