"""Request checks against the config's limits (no torch needed)."""

from __future__ import annotations

import pytest

from gateway.configs.schema import DiffusersArgs
from services.image.api import make_job, parse_size
from services.image.errors import BadRequest

FLUX = DiffusersArgs(pipeline="flux", default_size=256, max_size=512, default_steps=4, max_steps=50, max_images=4)
OVIS = DiffusersArgs(pipeline="ovis", default_size=256, max_size=512, default_guidance=5.0)


@pytest.mark.parametrize("size,expected", [(None, (256, 256)), ("512x256", (512, 256)), ("128X64", (128, 64)),
                                           (" 64 x 64 ", (64, 64)), ("256", (256, 256)), (320, (320, 320))])
def test_sizes(size: str | int | None, expected: tuple[int, int]) -> None:
    assert parse_size(size, FLUX) == expected


@pytest.mark.parametrize("size", ["250x256", "256x100", "4096x4096", "528x512", "48x48", "big", "1024x", "0x0"])
def test_bad_sizes(size: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_size(size, FLUX)
    assert e.value.param == "size"


def test_defaults_and_seeds() -> None:
    job = make_job(" a cat ", None, 2, None, None, 7, None, FLUX)
    assert (job.prompt, job.width, job.steps, job.guidance, job.n, job.seed) == ("a cat", 256, 4, 3.5, 2, 7)
    assert job.batch_key == make_job("a dog", "256x256", 1, 4, 3.5, None, None, FLUX).batch_key


@pytest.mark.parametrize("kwargs,param", [
    (dict(prompt=""), "prompt"), (dict(prompt="   "), "prompt"), (dict(n=0), "n"), (dict(n=5), "n"),
    (dict(steps=0), "steps"), (dict(steps=51), "steps"), (dict(guidance=-1.0), "guidance_scale"),
    (dict(seed=-1), "seed"), (dict(seed=2**40), "seed"), (dict(negative_prompt="blurry"), "negative_prompt"),
])
def test_bad_inputs(kwargs: dict, param: str) -> None:
    args = dict(prompt="a cat", size=None, n=1, steps=None, guidance=None, seed=None, negative_prompt=None)
    with pytest.raises(BadRequest) as e:
        make_job(**{**args, **kwargs}, args=FLUX)
    assert e.value.param == param


def test_ovis_negative_prompt_and_simple_names() -> None:
    job = make_job("a cat", 256, 1, 10, 4.0, 1, "blurry", OVIS)
    assert (job.negative_prompt, job.guidance) == ("blurry", 4.0)
    with pytest.raises(BadRequest) as e:
        make_job("a cat", 250, 1, None, None, None, None, OVIS, {"size": "image_size"})
    assert e.value.param == "image_size"
