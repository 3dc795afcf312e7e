"""Request and response models of the service's two APIs, and the checks that turn a request into a Job.

OpenAI `POST /v1/images/generations`: model, prompt, n, size "WxH", response_format, plus the engine's
own fields (steps, guidance_scale, seed, negative_prompt; common aliases accepted). Unknown OpenAI fields
(quality, style, user, ...) are accepted and ignored so that stock clients work.
The original Ovis deployment's `POST /api/generate`: prompt, image_size, denoising_steps, cfg_scale, seed.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from gateway.configs.schema import DiffusersArgs
from services.image.errors import BadRequest
from services.image.jobs import MAX_SEED, Job

SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX×*]\s*(\d{1,5})\s*$")
MIN_SIDE = 64
MULTIPLE = 16  # VAE factor 8 x patch 2: FLUX and Ovis need sides that are multiples of 16
MAX_PROMPT_CHARS = 4000
MAX_GUIDANCE = 30.0


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: str | None = Field(None, description="served name, config name or alias")
    prompt: str = Field(description="what to draw")
    n: int = Field(1, description="images to generate (at most the config's max_images)")
    size: str | None = Field(None, description="'WxH', each side a multiple of 16; default: the config's",
                             examples=["1024x1024"])
    response_format: Literal["b64_json", "url"] = Field(
        "b64_json", description="b64_json (PNG inline) or url (served by the service, expires)")
    steps: int | None = Field(None, validation_alias=AliasChoices("steps", "num_inference_steps"),
                              description="denoising steps; default: the config's")
    guidance_scale: float | None = Field(
        None, validation_alias=AliasChoices("guidance_scale", "guidance", "cfg_scale"),
        description="FLUX: distilled guidance; Ovis: classifier-free guidance scale")
    seed: int | None = Field(None, description="fixed seed; image i of n uses seed + i")
    negative_prompt: str | None = Field(None, description="Ovis only: what to steer away from")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None
    seed: int


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class SimpleGenerate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str
    negative_prompt: str = ""
    image_size: int | str | None = Field(None, description="1024 (square) or '1024x768'", examples=[1024])
    denoising_steps: int | None = None
    cfg_scale: float | None = None
    seed: int | None = None


class SimpleResult(BaseModel):
    filename: str
    url: str
    seed: int
    image_size: str
    seconds: float


def parse_size(size: str | int | None, args: DiffusersArgs, param: str = "size") -> tuple[int, int]:
    if size is None or size == "":
        return args.default_size, args.default_size
    if isinstance(size, int):
        w = h = size
    else:
        m = SIZE_RE.match(size)
        if not m:
            if size.strip().isdigit():
                w = h = int(size)
            else:
                raise BadRequest(f"size must look like '1024x1024' (WIDTHxHEIGHT), got {size!r}", param)
        else:
            w, h = int(m.group(1)), int(m.group(2))
    for side in (w, h):
        if side % MULTIPLE:
            raise BadRequest(f"size {w}x{h}: each side must be a multiple of {MULTIPLE}", param)
        if not MIN_SIDE <= side <= args.max_size:
            raise BadRequest(f"size {w}x{h}: each side must be between {MIN_SIDE} and {args.max_size}", param)
    return w, h


def _check_range(value: float, lo: float, hi: float, param: str) -> None:
    if not lo <= value <= hi:
        raise BadRequest(f"{param} must be between {lo:g} and {hi:g}, got {value:g}", param)


def make_job(prompt: str, size: str | int | None, n: int, steps: int | None, guidance: float | None,
             seed: int | None, negative_prompt: str | None, args: DiffusersArgs,
             names: dict[str, str] | None = None) -> Job:
    """Validate against the config's limits; `names` maps field -> the caller's parameter name."""
    names = names or {}
    if not prompt or not prompt.strip():
        raise BadRequest("prompt must not be empty", names.get("prompt", "prompt"))
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"prompt is longer than {MAX_PROMPT_CHARS} characters", names.get("prompt", "prompt"))
    w, h = parse_size(size, args, names.get("size", "size"))
    _check_range(n, 1, args.max_images, "n")
    steps = args.default_steps if steps is None else steps
    _check_range(steps, 1, args.max_steps, names.get("steps", "steps"))
    guidance = args.default_guidance if guidance is None else guidance
    _check_range(guidance, 0.0, MAX_GUIDANCE, names.get("guidance", "guidance_scale"))
    if seed is not None:
        _check_range(seed, 0, MAX_SEED, "seed")
    if negative_prompt and args.pipeline != "ovis":
        raise BadRequest("negative_prompt is only supported by Ovis-Image (FLUX.1-dev is guidance-distilled)",
                         "negative_prompt")
    return Job(prompt.strip(), w, h, steps, float(guidance), seed, negative_prompt or "", n)
