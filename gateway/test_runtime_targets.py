import json

from gateway.configs import load_catalog
from gateway.registry import Backend
from gateway.runtime_targets import targets, write_targets

CATALOG = load_catalog()


def test_vllm_supervisor_image_and_vision_targets():
    running = {
        "tiny-llm": [{"url": "http://127.0.0.1:4001", "admin_url": "http://127.0.0.1:4002"}],
        "tiny-flux": [{"url": "http://127.0.0.1:4003", "admin_url": "http://127.0.0.1:4003"}],
        "mt-photos-cpu": [{"url": "http://127.0.0.1:4004"}],
    }
    files = targets(running, CATALOG)
    assert files["vllm.json"] == [{"targets": ["127.0.0.1:4001"], "labels": {"config": "tiny-llm", "engine": "vllm"}}]
    services = {g["targets"][0]: g["labels"] for g in files["services.json"]}
    assert services == {
        "127.0.0.1:4002": {"config": "tiny-llm", "engine": "vllm"},
        "127.0.0.1:4003": {"config": "tiny-flux", "engine": "diffusers"},
        "127.0.0.1:4004": {"config": "mt-photos-cpu", "engine": "vision"},
    }


def test_vllm_without_supervisor_and_replicas_and_backend_objects():
    running = {"llama3-8b": [Backend("llama3-8b", "http://llm-a:8000", "http://llm-a:8000"),
                             Backend("llama3-8b", "https://llm-b:8443/prefix/", "https://llm-b:8443/prefix/")]}
    files = targets(running, CATALOG)
    assert files["services.json"] == []
    assert [g["targets"] for g in files["vllm.json"]] == [["llm-a:8000"], ["llm-b:8443"]]
    assert files["vllm.json"][1]["labels"] == {"config": "llama3-8b", "engine": "vllm", "__scheme__": "https",
                                               "__metrics_path__": "/prefix/metrics"}


def test_write_targets_is_atomic_and_keeps_gateway_unless_given(tmp_path):
    write_targets({}, CATALOG, tmp_path, gateway="http://127.0.0.1:8080")
    assert json.loads((tmp_path / "gateway.json").read_text()) == [{"targets": ["127.0.0.1:8080"], "labels": {}}]
    write_targets({"tiny-llm": [{"url": "http://127.0.0.1:1", "admin_url": "http://127.0.0.1:2"}]}, CATALOG, tmp_path)
    assert json.loads((tmp_path / "gateway.json").read_text())[0]["targets"] == ["127.0.0.1:8080"]
    assert len(json.loads((tmp_path / "vllm.json").read_text())) == 1
    write_targets({}, CATALOG, tmp_path)  # everything stopped: the files empty out
    assert json.loads((tmp_path / "vllm.json").read_text()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.json", "services.json", "vllm.json"]
