"""What the service asks of the engine and what it gets back; no torch here, so the web layer and its
tests import it without the diffusers stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Job:
    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int | None = None
    negative_prompt: str = ""
    n: int = 1

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one pipeline call."""
        return (self.width, self.height, self.steps, self.guidance, self.negative_prompt)


@dataclass
class Result:
    images: list[Any]  # PIL images
    seeds: list[int]
    seconds: float  # wall time of the pipeline call(s) that made them, shared by a batch
    step_seconds: float  # mean time of one denoising step
    batch_images: int = 1
    timings: dict[str, float] = field(default_factory=dict)
