"""Service settings: the config's `vision:` section, overridden by the environment variables that the
MT Photos images document (so a compose file written for upstream keeps working).

Environment (all optional):
  API_AUTH_KEY            api-key header value (default mt_photos_ai_extra)
  VISION_BACKEND          openvino | onnxruntime
  VISION_DEVICE           default device for every task; OCR_DEVICE / CLIP_DEVICE / FACE_DEVICE per task
                          (OpenVINO: CPU, GPU, GPU.1, AUTO; ONNX Runtime: CPU, CUDA, CUDA:1)
  VISION_PRECISION        f32 | bf16 | f16 | auto (OpenVINO inference precision; f32 is exact);
                          OCR_PRECISION / CLIP_PRECISION / FACE_PRECISION per task (e.g. bf16 CLIP
                          and face on CPUs with AVX512_BF16/AMX while OCR stays exact)
  OCR_WORKERS / CLIP_WORKERS / FACE_WORKERS   parallel inference requests per model
  WEB_CONCURRENCY         server processes (each loads its own models)
  OCR_MODEL               PP-OCRv4 | PP-OCRv6
  OCR_REC_DYNAMIC_WIDTH   1 (default): recogniser width follows each batch; 0: widths padded to
                          fixed buckets (fewer distinct shapes for GPU plugins that recompile per shape;
                          the extra padding can change spaces between Latin words)
  CLIP_SWAP_RED_BLUE      1/0: reproduce the official image's BGR-as-RGB CLIP input (see README)
  DETECTION_THRESH        face detection threshold (0.65)
  VISION_MODELS_DIR       folder with clip/ and insightface/models/<pack>/ (CLIP and face files)
  IDLE_TIMEOUT_S          release models after this idle time (0 = never)
  HTTP_PORT               listen port when --port is not given
  ORT_INTRA_OP_THREADS    ONNX Runtime threads per inference (default: cores / workers)
  OCR_OV_HINT / CLIP_OV_HINT / FACE_OV_HINT   OpenVINO scheduling per task: latency (one stream over
                          all cores; the worker pool's requests queue on it while the others decode and
                          post-process), throughput (one single-core stream per worker) or auto (default:
                          latency for CLIP and face on CPU, measured faster at 1 and 8 clients on small
                          CPUs; throughput for OCR and on GPUs when workers > 1)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from gateway.configs.schema import Config, VisionArgs

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_KEY = "mt_photos_ai_extra"
TASKS = ("ocr", "clip", "face")
OCR_MODELS = ("PP-OCRv4", "PP-OCRv6")
OV_HINTS = ("auto", "latency", "throughput")


class SettingsError(ValueError):
    """A setting that cannot work; raised at start-up so the operator sees it at once."""


@dataclass(frozen=True)
class Settings:
    config_name: str = "mt-photos-cpu"
    api_key: str = DEFAULT_KEY
    backend: str = "openvino"
    devices: dict[str, str] = field(default_factory=lambda: dict.fromkeys(TASKS, "CPU"))
    precisions: dict[str, str] = field(default_factory=lambda: dict.fromkeys(TASKS, "f32"))
    workers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TASKS, 2))
    web_concurrency: int = 1
    ocr_model: str = "PP-OCRv4"
    ocr_rec_dynamic_width: bool = True
    clip_model: str = "vit-b-16"
    clip_swap_red_blue: bool = True
    face_model: str = "buffalo_l"
    detection_thresh: float = 0.65
    models_dir: Path = ROOT / ".run" / "models" / "mt-photos"
    idle_timeout_s: float = 900.0
    port: int = 8060
    ort_intra_threads: int | None = None
    ov_hints: dict[str, str] = field(default_factory=lambda: dict.fromkeys(TASKS, "auto"))

    def ov_hint(self, task: str) -> str:
        """The OpenVINO scheduling for a task family, with "auto" resolved."""
        hint = self.ov_hints[task]
        if hint != "auto":
            return hint
        # CLIP and face run big convolution/GEMM graphs that already keep every core busy at batch 1:
        # N single-core streams halve one request's speed and (two compiled models, each with its own
        # pinned streams) can stack det and rec on one core while the other idles. One shared stream
        # is as fast at 8 clients and twice as fast at 1 (measured with benchmarks/vision.py).
        family = self.devices[task].split(":")[0].split(".")[0].upper()
        return "latency" if task in ("clip", "face") and family == "CPU" else "auto"

    @property
    def clip_dir(self) -> Path:
        return self.models_dir / "clip"

    @property
    def face_dir(self) -> Path:
        # insightface's own layout (<root>/models/<pack>), so an existing ~/.insightface can be mounted.
        return self.models_dir / "insightface" / "models" / self.face_model


def _flag(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"expected a boolean (1/0, true/false, on/off), got {value!r}")


def _int(name: str, value: str, minimum: int = 1) -> int:
    try:
        n = int(value)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {value!r}") from None
    if n < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {n}")
    return n


def _models_dir(cfg: Config, args: VisionArgs, env: dict[str, str]) -> Path:
    if env.get("VISION_MODELS_DIR"):
        return Path(env["VISION_MODELS_DIR"])
    if args.models_dir:
        return Path(args.models_dir)
    base = Path(env.get("MODELS_DIR") or ROOT / ".run" / "models")
    return base / cfg.model.checkpoint


def from_config(cfg: Config, env: dict[str, str] | None = None) -> Settings:
    """Settings for `cfg`, with environment overrides applied and validated."""
    env = dict(os.environ if env is None else env)
    args = cfg.vision or VisionArgs()
    device = env.get("VISION_DEVICE") or args.device
    precision = env.get("VISION_PRECISION") or args.precision
    s = Settings(
        config_name=cfg.name,
        api_key=env.get("API_AUTH_KEY", DEFAULT_KEY),
        backend=env.get("VISION_BACKEND") or args.backend,
        devices={t: env.get(f"{t.upper()}_DEVICE") or device for t in TASKS},
        precisions={t: env.get(f"{t.upper()}_PRECISION") or precision for t in TASKS},
        workers={
            "ocr": args.ocr_workers,
            "clip": args.clip_workers,
            "face": args.face_workers,
        },
        web_concurrency=args.web_concurrency,
        ocr_model=env.get("OCR_MODEL") or args.ocr_model,
        clip_model=args.clip_model,
        clip_swap_red_blue=args.clip_swap_red_blue,
        face_model=env.get("RECOGNITION_MODEL") or args.face_model,
        detection_thresh=args.detection_thresh,
        models_dir=_models_dir(cfg, args, env),
        idle_timeout_s=float(env.get("IDLE_TIMEOUT_S") or cfg.idle_timeout_s),
        port=cfg.port,
    )
    return apply_env(s, env)


def apply_env(s: Settings, env: dict[str, str]) -> Settings:
    workers = dict(s.workers)
    for t in TASKS:
        if env.get(f"{t.upper()}_WORKERS"):
            workers[t] = _int(f"{t.upper()}_WORKERS", env[f"{t.upper()}_WORKERS"])
    hints = dict(s.ov_hints)
    for t in TASKS:
        if env.get(f"{t.upper()}_OV_HINT"):
            hints[t] = env[f"{t.upper()}_OV_HINT"].strip().lower()
    changes: dict[str, object] = {"workers": workers, "ov_hints": hints}
    if env.get("WEB_CONCURRENCY"):
        changes["web_concurrency"] = _int("WEB_CONCURRENCY", env["WEB_CONCURRENCY"])
    if env.get("OCR_REC_DYNAMIC_WIDTH"):
        changes["ocr_rec_dynamic_width"] = _flag(env["OCR_REC_DYNAMIC_WIDTH"])
    if env.get("CLIP_SWAP_RED_BLUE"):
        changes["clip_swap_red_blue"] = _flag(env["CLIP_SWAP_RED_BLUE"])
    if env.get("DETECTION_THRESH"):
        try:
            changes["detection_thresh"] = float(env["DETECTION_THRESH"])
        except ValueError:
            raise SettingsError(f"DETECTION_THRESH must be a number, got {env['DETECTION_THRESH']!r}") from None
    if env.get("HTTP_PORT"):
        changes["port"] = _int("HTTP_PORT", env["HTTP_PORT"])
    if env.get("ORT_INTRA_OP_THREADS"):
        changes["ort_intra_threads"] = _int("ORT_INTRA_OP_THREADS", env["ORT_INTRA_OP_THREADS"])
    return validate(replace(s, **changes))  # type: ignore[arg-type]


def validate(s: Settings) -> Settings:
    if s.backend not in ("openvino", "onnxruntime"):
        raise SettingsError(f"backend must be openvino or onnxruntime, got {s.backend!r}")
    if s.ocr_model not in OCR_MODELS:
        raise SettingsError(f"OCR model must be one of {', '.join(OCR_MODELS)}, got {s.ocr_model!r}")
    for task, prec in s.precisions.items():
        if prec not in ("f32", "bf16", "f16", "auto"):
            raise SettingsError(f"{task.upper()}_PRECISION must be f32, bf16, f16 or auto, got {prec!r}")
    for task, hint in s.ov_hints.items():
        if hint not in OV_HINTS:
            raise SettingsError(f"{task.upper()}_OV_HINT must be auto, latency or throughput, got {hint!r}")
    if not 0 < s.detection_thresh < 1:
        raise SettingsError(f"detection threshold must be in (0, 1), got {s.detection_thresh}")
    for task, dev in s.devices.items():
        family = dev.split(":")[0].split(".")[0].upper()
        allowed = ("CPU", "GPU", "AUTO", "NPU") if s.backend == "openvino" else ("CPU", "CUDA")
        if family not in allowed:
            raise SettingsError(
                f"{task.upper()}_DEVICE={dev!r} is not a {s.backend} device (use one of {', '.join(allowed)})"
            )
    return s
