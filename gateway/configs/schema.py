"""The one schema every `configs/<name>.yaml` must satisfy.

Everything else (gateway routes, compose services, engine command lines, the start/stop scripts)
is derived from these models, so the checks that protect operators live here: name and GPU-count
agreement, engine sections that match the engine, and a weights-size estimate against the GPU
memory the config declares.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = r"^[a-z0-9][a-z0-9._-]*$"


class Strict(BaseModel):
    # Typos in a YAML key must fail validation instead of being silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Engine(StrEnum):
    vllm = "vllm"
    diffusers = "diffusers"
    vision = "vision"


class Protocol(StrEnum):
    openai = "openai"
    ollama = "ollama"
    mtphotos = "mtphotos"


class Capability(StrEnum):
    completion = "completion"  # text generation (chat and/or completions)
    tools = "tools"
    insert = "insert"  # fill-in-the-middle (suffix)
    vision = "vision"  # image input
    thinking = "thinking"  # separate reasoning output
    embedding = "embedding"
    image = "image"  # image generation
    ocr = "ocr"
    clip = "clip"
    face = "face"


class Quantization(StrEnum):
    """How the weights are stored on the GPU; drives the size estimate."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    fp8 = "fp8"
    int8 = "int8"
    awq = "awq"  # 4-bit
    gptq = "gptq"  # 4-bit
    int4 = "int4"


BYTES_PER_PARAM: dict[Quantization, float] = {
    Quantization.fp32: 4.0,
    Quantization.bf16: 2.0,
    Quantization.fp16: 2.0,
    Quantization.fp8: 1.0,
    Quantization.int8: 1.0,
    # 4-bit formats carry group scales and zeros: about 4.25 bits per weight in practice.
    Quantization.awq: 0.53,
    Quantization.gptq: 0.53,
    Quantization.int4: 0.53,
}

GIB = 1024**3
# CUDA context, activations and the engine's own buffers, per GPU, on top of the weights.
RUNTIME_OVERHEAD_GIB = 2.0


class GPUs(Strict):
    vendor: Literal["nvidia", "intel", "none"] = "none"
    count: int = Field(0, ge=0, le=64)
    memory_gib: float = Field(80.0, gt=0, description="memory of one GPU")
    device_ids: list[str] | None = Field(None, description="pin these GPUs; default: least loaded")

    @model_validator(mode="after")
    def _consistent(self) -> GPUs:
        if self.vendor == "none" and self.count:
            raise ValueError("gpus.count must be 0 when gpus.vendor is 'none'")
        if self.vendor != "none" and not self.count:
            raise ValueError(f"gpus.vendor is {self.vendor!r} but gpus.count is 0")
        if self.device_ids is not None and len(self.device_ids) != self.count:
            raise ValueError(f"gpus.device_ids names {len(self.device_ids)} GPUs but gpus.count is {self.count}")
        return self


class Model(Strict):
    served_name: str = Field(min_length=1, description="the `model` clients send")
    checkpoint: str = Field(min_length=1, description="hub repo id, or a folder under MODELS_DIR")
    revision: str | None = None
    build: str | None = Field(None, description="offline builder that creates a dev/test checkpoint")
    aliases: list[str] = []
    family: str
    parameters_b: float = Field(gt=0, description="parameters, in billions")
    quantization: Quantization = Quantization.bf16
    context_length: int | None = Field(None, gt=0)
    embedding_length: int | None = Field(None, gt=0)
    capabilities: list[Capability]

    def weights_gib(self) -> float:
        return self.parameters_b * 1e9 * BYTES_PER_PARAM[self.quantization] / GIB


class VLLMArgs(Strict):
    """Arguments for `vllm serve`; the entrypoint turns them into a command line."""

    tensor_parallel_size: int | None = Field(None, ge=1, description="default: gpus.count")
    max_model_len: int | None = Field(None, gt=0)
    gpu_memory_utilization: float = Field(0.90, gt=0, le=1)
    quantization: str | None = Field(None, description="vLLM --quantization, e.g. fp8, awq_marlin")
    dtype: str = "auto"
    kv_cache_dtype: str | None = None
    kv_cache_memory_bytes: int | None = Field(None, gt=0, description="required on CPU")
    max_num_seqs: int | None = Field(None, gt=0)
    chat_template: str | None = None
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    limit_mm_per_prompt: dict[str, int] | None = None
    runner: Literal["generate", "pooling"] | None = None
    trust_remote_code: bool = False
    enforce_eager: bool = False
    tokenizer_mode: str | None = None
    structured_outputs_backend: str | None = None
    extra_args: list[str] = []
    env: dict[str, str] = {}


class DiffusersArgs(Strict):
    pipeline: Literal["flux", "ovis"]
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    default_size: int = Field(1024, ge=64)
    max_size: int = Field(2048, ge=64)
    default_steps: int = Field(28, ge=1)
    max_steps: int = Field(100, ge=1)
    default_guidance: float = 3.5
    max_images: int = Field(4, ge=1, description="largest n per request")
    queue_size: int = Field(8, ge=1, description="requests waiting beyond this get 429")
    compile: bool = Field(False, description="regional torch.compile of the repeated blocks")
    fuse_qkv: bool = False
    fp8: bool = Field(False, description="dynamic float8 matmuls (own layer; IMAGE_FP8_IMPL=torchao): lossy, Hopper")
    fp8_attention: bool | None = Field(None, description="with fp8: cuDNN fp8 attention, lossy (default: on)")
    vae_tiling_above: int | None = Field(None, description="tile the VAE decode above this size")
    cfg_batch: bool = Field(True, description="Ovis: cond+uncond in one forward when faster")


class VisionArgs(Strict):
    backend: Literal["openvino", "onnxruntime"] = "openvino"
    device: str = Field("CPU", description="OpenVINO: CPU, GPU, AUTO; ONNX Runtime: CPU, CUDA")
    precision: Literal["f32", "bf16", "f16", "auto"] = "f32"
    ocr_model: Literal["PP-OCRv4", "PP-OCRv6"] = "PP-OCRv4"
    clip_model: str = "vit-b-16"
    clip_swap_red_blue: bool = Field(True, description="reproduce the official service's BGR-as-RGB")
    face_model: str = "buffalo_l"
    detection_thresh: float = Field(0.65, gt=0, lt=1)
    ocr_workers: int = Field(2, ge=1)
    clip_workers: int = Field(2, ge=1)
    face_workers: int = Field(2, ge=1)
    web_concurrency: int = Field(1, ge=1)
    models_dir: str | None = Field(None, description="where the CLIP and face files are")


class Container(Strict):
    image: str | None = Field(None, description="default: derived from the engine")
    port: int | None = Field(None, description="port inside the private network; default per engine")
    health: str | None = Field(None, description="health endpoint; default per engine")
    env: dict[str, str] = {}
    shm_size: str | None = None


DEFAULT_PORT = {Engine.vllm: 8000, Engine.diffusers: 8000, Engine.vision: 8060}
DEFAULT_HEALTH = {Engine.vllm: "/health", Engine.diffusers: "/healthz", Engine.vision: "/healthz"}
DEFAULT_IMAGE = {Engine.vllm: "modelplat/llm", Engine.diffusers: "modelplat/image", Engine.vision: "modelplat/vision"}


class Config(Strict):
    name: Annotated[str, Field(pattern=NAME_RE)]
    description: str = ""
    engine: Engine
    model: Model
    protocols: list[Protocol] = Field(min_length=1)
    gpus: GPUs = GPUs()
    idle_timeout_s: int = Field(900, ge=0, description="unload after this much idle time; 0 = never")
    vllm: VLLMArgs | None = None
    diffusers: DiffusersArgs | None = None
    vision: VisionArgs | None = None
    container: Container = Container()

    @field_validator("protocols")
    @classmethod
    def _unique_protocols(cls, v: list[Protocol]) -> list[Protocol]:
        if len(set(v)) != len(v):
            raise ValueError("protocols lists a protocol twice")
        return v

    @model_validator(mode="after")
    def _engine_section(self) -> Config:
        sections = {Engine.vllm: self.vllm, Engine.diffusers: self.diffusers, Engine.vision: self.vision}
        if sections[self.engine] is None:
            raise ValueError(f"engine is {self.engine.value!r} but the {self.engine.value!r} section is missing")
        extra = [e.value for e, s in sections.items() if s is not None and e != self.engine]
        if extra:
            raise ValueError(f"section(s) {extra} do not belong to engine {self.engine.value!r}")
        return self

    @model_validator(mode="after")
    def _gpu_suffix(self) -> Config:
        # The deployment table's convention: `name_N` runs on N GPUs (N is vLLM's tensor parallel size).
        m = re.search(r"_(\d+)$", self.name)
        if m and int(m.group(1)) != self.gpus.count:
            raise ValueError(f"name ends in _{m.group(1)} but gpus.count is {self.gpus.count}")
        tp = self.vllm.tensor_parallel_size if self.vllm else None
        if tp and self.gpus.count and tp > self.gpus.count:
            raise ValueError("vllm.tensor_parallel_size is larger than gpus.count")
        return self

    @model_validator(mode="after")
    def _fits(self) -> Config:
        if self.gpus.count == 0:
            return self
        util = self.vllm.gpu_memory_utilization if self.vllm else 0.95
        budget = self.gpus.count * self.gpus.memory_gib * util
        need = self.model.weights_gib() * 1.05 + RUNTIME_OVERHEAD_GIB * self.gpus.count
        if need > budget:
            raise ValueError(
                f"model does not fit: ~{self.model.weights_gib():.0f} GiB of weights in "
                f"{self.model.quantization.value} (~{need:.0f} GiB with runtime overhead) but "
                f"{self.gpus.count} x {self.gpus.memory_gib:g} GiB x {util:g} utilisation = {budget:.0f} GiB; "
                "use a quantized checkpoint (fp8/awq/gptq) or more GPUs"
            )
        fp8_flag = self.vllm is not None and self.vllm.quantization == "fp8"
        if self.model.quantization == Quantization.fp8 and not (fp8_flag or "fp8" in self.model.checkpoint.lower()):
            # Dynamic FP8 needs the flag; a pre-quantized checkpoint announces itself in its name.
            raise ValueError("model.quantization is fp8: use an FP8 checkpoint or set vllm.quantization: fp8")
        return self

    # ---- derived values (one place, so compose, the scripts and the gateway agree) ----
    @property
    def port(self) -> int:
        return self.container.port or DEFAULT_PORT[self.engine]

    @property
    def health(self) -> str:
        return self.container.health or DEFAULT_HEALTH[self.engine]

    @property
    def image(self) -> str:
        if self.container.image:
            return self.container.image
        suffix = "-cpu" if self.gpus.vendor == "none" else ("-intel" if self.gpus.vendor == "intel" else "")
        return DEFAULT_IMAGE[self.engine] + suffix

    @property
    def is_cpu(self) -> bool:
        return self.gpus.vendor == "none"

    def model_names(self) -> list[str]:
        """Every name a client may send for this config (served name, config name, aliases)."""
        names = [self.model.served_name, self.name, *self.model.aliases]
        return list(dict.fromkeys(names))
