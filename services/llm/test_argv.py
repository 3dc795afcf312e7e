"""The `vllm serve` command line for every vLLM config in the catalog (flag spellings of vLLM 0.32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.configs import Engine, load_catalog
from services.llm.argv import resolve_checkpoint, vllm_argv, vllm_env

CATALOG = load_catalog()
VLLM_CONFIGS = [c for c in CATALOG if c.engine == Engine.vllm]

# Every flag vllm_argv may emit, as spelled by `vllm serve --help=all` in vLLM 0.32.0.
KNOWN_FLAGS = {
    "--host", "--port", "--served-model-name", "--revision", "--tensor-parallel-size", "--max-model-len",
    "--gpu-memory-utilization", "--kv-cache-memory-bytes", "--max-num-seqs", "--dtype", "--quantization",
    "--kv-cache-dtype", "--runner", "--tokenizer-mode", "--trust-remote-code", "--enforce-eager",
    "--chat-template", "--reasoning-parser", "--tool-call-parser", "--enable-auto-tool-choice",
    "--limit-mm-per-prompt", "--structured-outputs-config", "--enable-sleep-mode",
}


def argv_of(name: str, **kw) -> list[str]:
    return vllm_argv(CATALOG.require(name), "0.0.0.0", 8000, "/models/x", **kw)


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_catalog_has_vllm_configs():
    assert len(VLLM_CONFIGS) >= 20


@pytest.mark.parametrize("cfg", VLLM_CONFIGS, ids=lambda c: c.name)
def test_every_config(cfg):
    argv = vllm_argv(cfg, "0.0.0.0", 8000, "/models/x")
    assert argv[:3] == ["vllm", "serve", "/models/x"]
    assert flag(argv, "--served-model-name") == cfg.model.served_name
    derived = argv[: len(argv) - len(cfg.vllm.extra_args)] if cfg.vllm.extra_args else argv
    assert {a for a in derived if a.startswith("--")} <= KNOWN_FLAGS
    if cfg.gpus.count:
        assert flag(argv, "--tensor-parallel-size") == str(cfg.vllm.tensor_parallel_size or cfg.gpus.count)
        assert flag(argv, "--gpu-memory-utilization") is not None
    else:  # CPU: the KV cache must be sized explicitly (recipe pitfall 5), never a fraction of host RAM
        assert "--tensor-parallel-size" not in argv and "--gpu-memory-utilization" not in argv
        assert int(flag(argv, "--kv-cache-memory-bytes")) > 0
    if cfg.vllm.max_model_len:
        assert flag(argv, "--max-model-len") == str(cfg.vllm.max_model_len)
    assert ("--enable-auto-tool-choice" in argv) == bool(cfg.vllm.tool_call_parser)
    assert ("--trust-remote-code" in argv) == cfg.vllm.trust_remote_code
    env = vllm_env(cfg, "/models/x")
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"


def test_golden_llama3_70b_on_one_gpu():
    argv = argv_of("llama3-70b_1")
    assert flag(argv, "--quantization") == "awq_marlin"
    assert flag(argv, "--tensor-parallel-size") == "1"
    assert flag(argv, "--max-model-len") == "8192"
    assert flag(argv, "--gpu-memory-utilization") == "0.92"


def test_golden_405b_on_eight_gpus():
    argv = argv_of("llama3.1-405b_8")
    assert flag(argv, "--tensor-parallel-size") == "8"
    assert flag(argv, "--tool-call-parser") == "llama3_json"


@pytest.mark.parametrize("name,tp", [("llama3-70b_4", "4"), ("nemotron-70b_2", "2"), ("gemma2-27b_4", "4")])
def test_tp_follows_gpu_count(name, tp):
    assert flag(argv_of(name), "--tensor-parallel-size") == tp


def test_golden_thinking_and_vision():
    think = argv_of("qwen3-4b-thinking")
    assert flag(think, "--reasoning-parser") == "deepseek_r1"
    assert flag(think, "--tool-call-parser") == "hermes" and "--enable-auto-tool-choice" in think
    vl = argv_of("qwen2.5-vl-3b")
    assert json.loads(flag(vl, "--limit-mm-per-prompt")) == {"image": 4}


def test_golden_fp8_kv_and_mistral_tokenizer():
    assert flag(argv_of("openbiollm-llama3-70b_1"), "--kv-cache-dtype") == "fp8"
    assert flag(argv_of("codestral-22b-v0.1"), "--tokenizer-mode") == "mistral"
    assert "--trust-remote-code" in argv_of("minicpm-v2.5")


def test_golden_cpu_configs():
    tiny = argv_of("tiny-llm")
    assert flag(tiny, "--dtype") == "bfloat16" and "--enforce-eager" in tiny
    assert flag(tiny, "--kv-cache-memory-bytes") == "67108864"
    # the config's extra --structured-outputs-config replaces the derived one, and comes last
    assert tiny.count("--structured-outputs-config") == 1
    assert json.loads(tiny[-1]) == {"backend": "xgrammar", "disable_any_whitespace": True}
    emb = argv_of("all-minilm")
    assert flag(emb, "--runner") == "pooling" and flag(emb, "--dtype") == "float32"
    assert vllm_env(CATALOG.require("tiny-llm"))["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


def test_sleep_mode_is_static_only():
    cfg = CATALOG.require("llama3-8b")
    assert "--enable-sleep-mode" in vllm_argv(cfg, "h", 1, "m", unload_mode="sleep")
    assert "--enable-sleep-mode" not in vllm_argv(cfg, "h", 1, "m")
    assert vllm_env(cfg, unload_mode="sleep")["VLLM_SERVER_DEV_MODE"] == "1"
    with pytest.raises(ValueError):
        vllm_argv(cfg, "h", 1, "m", unload_mode="pause")


def test_hub_id_is_not_offline_and_local_is(tmp_path: Path):
    cfg = CATALOG.require("llama3-8b")
    assert resolve_checkpoint(cfg, tmp_path) == cfg.model.checkpoint
    assert "HF_HUB_OFFLINE" not in vllm_env(cfg, cfg.model.checkpoint)
    (tmp_path / cfg.model.checkpoint).mkdir(parents=True)
    assert resolve_checkpoint(cfg, tmp_path) == str(tmp_path / cfg.model.checkpoint)
    tiny = CATALOG.require("tiny-llm")  # has a builder: always the local folder (built on first load)
    assert resolve_checkpoint(tiny, tmp_path) == str(tmp_path / "tiny-llm")


def test_non_vllm_config_is_rejected():
    with pytest.raises(ValueError, match="not vllm"):
        vllm_argv(CATALOG.require("flux.1-dev"), "h", 1, "m")
