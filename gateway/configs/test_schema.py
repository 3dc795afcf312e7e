from pathlib import Path

import pytest
import yaml

from gateway.configs import ConfigError, load_catalog, load_file
from gateway.configs.__main__ import main as cli

ORIGINAL_TABLE = {
    # name: (served model, GPUs)
    "llama3-8b": ("Llama3-8B", 1), "llama3-70b_1": ("Llama3-70B", 1), "llama3-70b_4": ("Llama3-70B", 4),
    "qwen1.5-110b_1": ("Qwen1.5-110B", 1), "qwen1.5-110b_4": ("Qwen1.5-110B", 4), "yi1.5-34b": ("Yi1.5-34B", 1),
    "qwen2-72b_1": ("Qwen2-72B", 1), "qwen2-72b_4": ("Qwen2-72B", 4), "falcon2-11b": ("Falcon2-11B", 1),
    "openbiollm-llama3-70b_1": ("OpenBioLLM-Llama3-70B", 1), "openbiollm-llama3-70b_4": ("OpenBioLLM-Llama3-70B", 4),
    "minicpm-v2.5": ("MiniCPM-Llama3-V2.5", 1), "codestral-22b-v0.1": ("Codestral-22B-v0.1", 1),
    "gemma2-27b_4": ("Gemma-2-27B", 4), "llama3.1-405b_8": ("Llama-3.1-405B", 8), "mistral-123b_4": ("Mistral-123B", 4),
    "flux.1-dev": ("FLUX.1-dev", 1), "nemotron-70b_2": ("Llama-3.1-Nemotron-70B", 2), "nvlm-70b_4": ("NVLM-D-72B", 4),
}
ADDED = ["qwen3-4b-thinking", "qwen2.5-vl-3b", "ovis-image-7b", "mt-photos", "tiny-llm", "all-minilm", "tiny-flux",
         "mt-photos-cpu"]


def test_every_catalog_file_validates():
    cat = load_catalog()
    assert len(cat) >= len(ORIGINAL_TABLE) + len(ADDED)


@pytest.mark.parametrize("name", sorted(ORIGINAL_TABLE))
def test_original_deployment_table(name):
    cfg = load_catalog().require(name)
    served, gpus = ORIGINAL_TABLE[name]
    assert cfg.model.served_name == served
    assert cfg.gpus.count == gpus


def test_added_configs_and_their_features():
    cat = load_catalog()
    for n in ADDED:
        cat.require(n)
    assert cat.require("qwen3-4b-thinking").vllm.reasoning_parser
    assert "vision" in cat.require("qwen2.5-vl-3b").model.capabilities
    assert cat.require("minicpm-v2.5").protocols[0] == "ollama"
    assert cat.require("all-minilm").vllm.runner == "pooling"
    assert cat.require("tiny-llm").is_cpu and cat.require("mt-photos-cpu").is_cpu


@pytest.mark.parametrize("name", ["llama3-70b_1", "qwen1.5-110b_1", "qwen2-72b_1", "openbiollm-llama3-70b_1",
                                  "llama3.1-405b_8"])
def test_oversized_models_say_how_they_fit(name):
    cfg = load_catalog().require(name)
    assert cfg.model.quantization.value in ("fp8", "awq", "gptq")
    assert cfg.vllm.max_model_len


def write(tmp_path: Path, name: str, data: dict) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def base(**over):
    d = yaml.safe_load(Path("configs/llama3-8b.yaml").read_text())
    d.update(over)
    return d


def test_bf16_70b_on_one_gpu_is_rejected_with_a_reason(tmp_path):
    d = base(name="big_1")
    d["model"] = {**d["model"], "parameters_b": 70.6, "served_name": "x"}
    with pytest.raises(ConfigError, match=r"does not fit: ~132 GiB of weights in bf16 .* use a quantized checkpoint"):
        load_file(write(tmp_path, "big_1", d))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(engine="diffusers"), "section is missing"),
        (lambda d: d.update(unknown_key=1), "unknown_key: Extra inputs are not permitted"),
        (lambda d: d["gpus"].update(count=2), "name ends|GPU"),
        (lambda d: d.update(name="Bad Name"), "name"),
        (lambda d: d.update(protocols=[]), "protocols"),
        (lambda d: d["model"].update(capabilities=["telepathy"]), "capabilities.0"),
        (lambda d: d["gpus"].update(vendor="none"), "gpus.count must be 0"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, mutate, message):
    d = base(name="cfg_1")
    d["gpus"] = {"vendor": "nvidia", "count": 1, "memory_gib": 80}
    mutate(d)
    with pytest.raises(ConfigError, match=message):
        load_file(write(tmp_path, "cfg_1", d))


def test_file_name_must_match(tmp_path):
    with pytest.raises(ConfigError, match="must match the file name"):
        load_file(write(tmp_path, "other", base(name="llama3-8b")))


def test_not_yaml(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("a: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_file(p)


def test_cli(capsys):
    assert cli(["validate"]) == 0
    assert cli(["list"]) == 0
    assert "llama3-70b_1" in capsys.readouterr().out
    assert cli(["get", "llama3-70b_4", "gpus.count"]) == 0
    assert capsys.readouterr().out.strip() == "4"
    assert cli(["show", "no-such-config"]) == 1
    assert "known configs" in capsys.readouterr().err
