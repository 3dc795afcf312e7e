"""How configured models look to Ollama clients: /api/tags, /api/show and /api/ps entries (pure).

Everything comes from the config catalog (family, parameter count, quantization, context length,
capabilities) plus, for /api/ps, the backend's lifecycle state. Nothing is invented: the format is
"safetensors" (vLLM loads Hugging Face checkpoints, not GGUF), the size is the weights estimate the
schema itself uses, and the digest is a stable hash of what the config loads.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from gateway.adapters.ollama_common import rfc3339
from gateway.configs import Capability, Config

# Capabilities Ollama clients understand (OCR, CLIP and face are MT Photos' business, not Ollama's).
OLLAMA_CAPABILITIES = ("completion", "tools", "insert", "vision", "embedding", "thinking")
QUANT_LEVEL = {"fp32": "F32", "bf16": "BF16", "fp16": "F16", "fp8": "FP8", "int8": "INT8",
               "awq": "AWQ_4BIT", "gptq": "GPTQ_4BIT", "int4": "INT4"}
FOREVER = "2318-01-01T00:00:00.000000000Z"  # what Ollama reports for a model kept loaded forever


def tag_name(cfg: Config) -> str:
    """The name a config is listed under: its served name with the default tag."""
    name = cfg.model.served_name
    return name if ":" in name else f"{name}:latest"


def parameter_size(billions: float) -> str:
    """Ollama's human form: 8.0B, 137M, 560K."""
    count = billions * 1e9
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.1f}{unit}" if unit == "B" else f"{value:.0f}{unit}"
    return f"{count:.0f}"


def size_bytes(cfg: Config) -> int:
    return int(cfg.model.weights_gib() * 1024**3)


def digest(cfg: Config) -> str:
    ident = f"{cfg.name}\0{cfg.model.checkpoint}\0{cfg.model.revision or ''}\0{cfg.model.quantization.value}"
    return hashlib.sha256(ident.encode()).hexdigest()


def capabilities(cfg: Config) -> list[str]:
    caps = {c.value for c in cfg.model.capabilities}
    return [c for c in OLLAMA_CAPABILITIES if c in caps]


def context_length(cfg: Config) -> int | None:
    return cfg.model.context_length or (cfg.vllm.max_model_len if cfg.vllm else None)


def details(cfg: Config) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "safetensors",
        "family": cfg.model.family,
        "families": [cfg.model.family],
        "parameter_size": parameter_size(cfg.model.parameters_b),
        "quantization_level": QUANT_LEVEL.get(cfg.model.quantization.value, cfg.model.quantization.value.upper()),
    }


def tags_entry(cfg: Config, modified_ns: int) -> dict[str, Any]:
    name = tag_name(cfg)
    return {"name": name, "model": name, "modified_at": rfc3339(modified_ns), "size": size_bytes(cfg),
            "digest": digest(cfg), "details": details(cfg), "capabilities": capabilities(cfg)}


def model_info(cfg: Config) -> dict[str, Any]:
    arch = cfg.model.family
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.basename": cfg.model.served_name,
        "general.parameter_count": int(cfg.model.parameters_b * 1e9),
        "general.quantization": cfg.model.quantization.value,
        "general.source": cfg.model.checkpoint,
    }
    if (ctx := context_length(cfg)) is not None:
        info[f"{arch}.context_length"] = ctx
    if cfg.model.embedding_length:
        info[f"{arch}.embedding_length"] = cfg.model.embedding_length
    return info


def show(cfg: Config, modified_ns: int) -> dict[str, Any]:
    ctx = context_length(cfg)
    modelfile = (f"# Served by modelplat (config {cfg.name}) with {cfg.engine.value}\n"
                 f"FROM {cfg.model.checkpoint}\n" + (f"PARAMETER num_ctx {ctx}\n" if ctx else ""))
    return {
        "license": "",
        "modelfile": modelfile,
        "parameters": f"num_ctx {ctx}" if ctx else "",
        # The backend applies the checkpoint's own (Jinja) chat template; there is no Go template to show.
        "template": "{{ .Prompt }}" if Capability.completion in cfg.model.capabilities else "",
        "system": "",
        "details": details(cfg),
        "model_info": model_info(cfg),
        "capabilities": capabilities(cfg),
        "modified_at": rfc3339(modified_ns),
    }


def ps_entry(cfg: Config, expires_in_s: float | None, now_ns: int) -> dict[str, Any]:
    """One loaded model. `expires_in_s` None or inf: no idle unload (Ollama shows a far-future time)."""
    if expires_in_s is None or math.isinf(expires_in_s):
        expires = FOREVER
    else:
        expires = rfc3339(now_ns + int(expires_in_s * 1e9))
    size = size_bytes(cfg)
    entry = {"name": tag_name(cfg), "model": tag_name(cfg), "size": size, "digest": digest(cfg),
             "details": details(cfg), "expires_at": expires, "size_vram": 0 if cfg.is_cpu else size}
    if (ctx := context_length(cfg)) is not None:
        entry["context_length"] = ctx
    return entry
