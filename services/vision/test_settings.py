import pytest

from gateway.configs import load_catalog
from services.vision.settings import SettingsError, from_config


def cfg(name: str = "mt-photos-cpu"):
    return load_catalog().require(name)


def test_config_values_and_defaults():
    s = from_config(cfg(), env={})
    assert s.backend == "openvino" and s.devices == {"ocr": "CPU", "clip": "CPU", "face": "CPU"}
    assert s.precisions == {"ocr": "f32", "clip": "f32", "face": "f32"}
    assert s.api_key == "mt_photos_ai_extra" and s.ocr_model == "PP-OCRv4"
    assert s.detection_thresh == 0.65 and s.clip_swap_red_blue and s.port == 8060
    assert s.models_dir.name == "mt-photos" and s.face_dir.parts[-3:] == ("insightface", "models", "buffalo_l")


def test_env_overrides():
    env = {"API_AUTH_KEY": "k", "VISION_BACKEND": "onnxruntime", "OCR_DEVICE": "CPU", "CLIP_WORKERS": "4",
           "FACE_WORKERS": "3", "OCR_WORKERS": "5", "WEB_CONCURRENCY": "2", "OCR_REC_DYNAMIC_WIDTH": "0",
           "CLIP_SWAP_RED_BLUE": "off", "DETECTION_THRESH": "0.5", "HTTP_PORT": "9000", "OCR_MODEL": "PP-OCRv6",
           "VISION_MODELS_DIR": "/m", "IDLE_TIMEOUT_S": "7", "CLIP_PRECISION": "bf16"}
    s = from_config(cfg(), env=env)
    assert (s.api_key, s.backend, s.web_concurrency, s.port) == ("k", "onnxruntime", 2, 9000)
    assert s.workers == {"ocr": 5, "clip": 4, "face": 3}
    assert not s.ocr_rec_dynamic_width and not s.clip_swap_red_blue and s.detection_thresh == 0.5
    assert s.precisions == {"ocr": "f32", "clip": "bf16", "face": "f32"}
    assert s.ocr_model == "PP-OCRv6" and str(s.models_dir) == "/m" and s.idle_timeout_s == 7


def test_openvino_hints_default_and_override():
    s = from_config(cfg(), env={})
    assert s.ov_hints == {"ocr": "auto", "clip": "auto", "face": "auto"}
    # auto: one shared stream for CLIP and face on CPU; OCR keeps a stream per worker (faster at c=8)
    assert (s.ov_hint("ocr"), s.ov_hint("clip"), s.ov_hint("face")) == ("auto", "latency", "latency")
    s = from_config(cfg(), env={"CLIP_OV_HINT": "Throughput", "OCR_OV_HINT": "latency", "FACE_DEVICE": "GPU"})
    assert (s.ov_hint("ocr"), s.ov_hint("clip"), s.ov_hint("face")) == ("latency", "throughput", "auto")


def test_cuda_config_selects_onnxruntime_cuda():
    s = from_config(cfg("mt-photos-cuda"), env={})
    assert s.backend == "onnxruntime" and set(s.devices.values()) == {"CUDA"}


@pytest.mark.parametrize("env", [
    {"OCR_WORKERS": "0"}, {"CLIP_WORKERS": "x"}, {"OCR_DEVICE": "CUDA"}, {"OCR_MODEL": "PP-OCRv9"},
    {"DETECTION_THRESH": "2"}, {"FACE_PRECISION": "int3"}, {"OCR_REC_DYNAMIC_WIDTH": "maybe"},
    {"VISION_BACKEND": "tensorrt"}, {"FACE_OV_HINT": "fast"},
])
def test_bad_settings_are_refused(env):
    with pytest.raises(SettingsError):
        from_config(cfg(), env=env)
