"""/api/tags, /api/show, /api/ps entries and embeddings translation, from the real config catalog."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.adapters import ollama as ad
from gateway.adapters.ollama_meta import FOREVER, parameter_size
from gateway.configs import load_catalog
from gateway.errors import BadRequest

CATALOG = load_catalog()
DATA = Path(__file__).parent / "testdata"
NOW = 1_700_000_000_000_000_000


@pytest.mark.parametrize(("billions", "text"), [(8.03, "8.0B"), (0.0227, "23M"), (0.00056, "560K"), (405, "405.0B")])
def test_parameter_size(billions: float, text: str) -> None:
    assert parameter_size(billions) == text


def test_tags_entry_describes_the_config() -> None:
    e = ad.tags_entry(CATALOG.require("tiny-llm"), NOW)
    assert e["name"] == e["model"] == "tiny-llm:latest"
    assert e["details"] == {"parent_model": "", "format": "safetensors", "family": "llama", "families": ["llama"],
                            "parameter_size": "560K", "quantization_level": "BF16"}
    assert e["capabilities"] == ["completion", "tools"]
    assert len(e["digest"]) == 64 and e["size"] == int(0.00056e9 * 2)
    assert e["modified_at"] == "2023-11-14T22:13:20.000000000Z"


def test_show_has_context_length_and_capabilities() -> None:
    s = ad.show(CATALOG.require("qwen3-4b-thinking"), NOW)
    assert s["model_info"]["qwen3.context_length"] == 32768
    assert s["model_info"]["general.architecture"] == "qwen3"
    assert s["capabilities"] == ["completion", "tools", "thinking"]
    e = ad.show(CATALOG.require("all-minilm"), NOW)
    assert e["capabilities"] == ["embedding"] and e["model_info"]["bert.embedding_length"] == 384
    assert ad.show(CATALOG.require("qwen2.5-vl-3b"), NOW)["capabilities"] == ["completion", "vision"]
    assert "insert" in ad.show(CATALOG.require("codestral-22b-v0.1"), NOW)["capabilities"]


def test_ps_entry_expiry() -> None:
    cfg = CATALOG.require("tiny-llm")
    assert ad.ps_entry(cfg, None, NOW)["expires_at"] == FOREVER
    e = ad.ps_entry(cfg, 60.0, NOW)
    assert e["expires_at"] == "2023-11-14T22:14:20.000000000Z"
    assert e["size_vram"] == 0 and e["context_length"] == 2048  # a CPU config holds nothing in VRAM
    gpu = ad.ps_entry(CATALOG.require("llama3-8b"), 1.0, NOW)
    assert gpu["size_vram"] == gpu["size"] > 14 * 1024**3


# ---------------------------------------------------------------- embeddings


def test_embed_request_and_response() -> None:
    cfg = CATALOG.require("all-minilm")
    body = {"model": "all-minilm", "input": ["a", "b"]}
    req = ad.embed_request(ad.embed_inputs(body), body, cfg, "all-minilm")
    assert req == {"model": "all-minilm", "input": ["a", "b"], "encoding_format": "float",
                   "truncate_prompt_tokens": -1}
    assert "truncate_prompt_tokens" not in ad.embed_request(["a"], {"truncate": False}, cfg, "m")
    reply = orjson.loads((DATA / "vllm_embeddings.json").read_bytes())
    out = ad.embed_response(reply, "all-minilm", {"total_duration": 5, "load_duration": 0})
    assert len(out["embeddings"]) == 2 and len(out["embeddings"][0]) == 384
    assert out["prompt_eval_count"] == reply["usage"]["prompt_tokens"] and out["total_duration"] == 5


def test_embed_input_validation() -> None:
    assert ad.embed_inputs({"input": "x"}) == ["x"]
    assert ad.embed_inputs({"input": ""}) == [] and ad.embed_inputs({}) == []
    with pytest.raises(BadRequest, match="input"):
        ad.embed_inputs({"input": [1, 2]})
    with pytest.raises(BadRequest, match="does not support embeddings"):
        ad.embed_request(["x"], {}, CATALOG.require("tiny-llm"), "tiny-llm")
    with pytest.raises(BadRequest, match="dimensions"):
        ad.embed_request(["x"], {"dimensions": 0}, CATALOG.require("all-minilm"), "m")


def test_load_reply_shapes() -> None:
    chat = ad.load_reply("chat", "m", "load", load_ns=3, total_ns=4)
    assert chat["message"] == {"role": "assistant", "content": ""} and chat["done_reason"] == "load"
    assert chat["load_duration"] == 3
    gen = ad.load_reply("generate", "m", "unload")
    assert gen["response"] == "" and gen["done"] is True and "load_duration" not in gen
