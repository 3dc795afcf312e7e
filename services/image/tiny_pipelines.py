"""Random-weight FLUX.1-dev and Ovis-Image pipelines, built offline.

`scale="tiny"`: a few MB, for CPU development and tests (images are noise by design).
`scale="full"`: the real architectures (FLUX.1-dev 12B + T5-XXL + CLIP-L, Ovis-Image-7B + Qwen3-1.7B-shaped
encoder) for the GPU benchmark; the time per step does not depend on the weight values.
Tokenizers are always the tiny local ones: prompts are padded to the real sequence lengths anyway.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import torch

from services.image import tiny_tokenizers as toks

FAMILIES = ("flux", "ovis")


@contextlib.contextmanager
def _build_on(device: str, dtype: torch.dtype):
    """Initialise parameters directly on the target device and dtype (12B params in seconds on a GPU)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def _vae(scale: str) -> Any:
    from diffusers import AutoencoderKL

    # 4 blocks keep the real 8x scale factor even when tiny (a 1-block VAE would mean 64x more tokens)
    tiny = scale == "tiny"
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32) if tiny else (128, 256, 512, 512),
        layers_per_block=1 if tiny else 2, norm_num_groups=8 if tiny else 32,
        sample_size=256 if tiny else 1024, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False,
    )


def _scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                           base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                           max_image_seq_len=4096)


def _flux_encoders(scale: str, tok: Any, tok2: Any) -> tuple[Any, Any]:
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tiny = scale == "tiny"
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok) if tiny else 49408, hidden_size=32 if tiny else 768,
        intermediate_size=64 if tiny else 3072, num_hidden_layers=1 if tiny else 12,
        num_attention_heads=4 if tiny else 12, max_position_embeddings=77, projection_dim=32 if tiny else 768,
        hidden_act="quick_gelu",
        # pooler_output reads the first eos position: the ids must be the tokenizer's
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    ))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tok2) if tiny else 32128, d_model=32 if tiny else 4096, d_kv=8 if tiny else 64,
        d_ff=64 if tiny else 10240, num_layers=1 if tiny else 24, num_heads=4 if tiny else 64,
        relative_attention_num_buckets=8 if tiny else 32, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False, pad_token_id=tok2.pad_token_id, eos_token_id=tok2.eos_token_id,
    ))
    return clip, t5


def _flux_transformer(scale: str) -> Any:
    from diffusers import FluxTransformer2DModel

    tiny = scale == "tiny"
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1 if tiny else 19, num_single_layers=1 if tiny else 38,
        attention_head_dim=16 if tiny else 128, num_attention_heads=2 if tiny else 24,
        joint_attention_dim=32 if tiny else 4096,  # == T5 d_model
        pooled_projection_dim=32 if tiny else 768,  # == CLIP hidden size (pooler_output)
        guidance_embeds=True,  # FLUX.1-dev is guidance-distilled
        axes_dims_rope=(4, 4, 8) if tiny else (16, 56, 56),  # sums to attention_head_dim
    )


def build_flux_transformer(scale: str = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """FLUX.1-dev's transformer alone, as the issue's reference step timings were taken (eval mode)."""
    torch.manual_seed(0)
    with _build_on(device, dtype):
        return _flux_transformer(scale).eval()


def build_flux(scale: str = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    from diffusers import FluxPipeline

    with tempfile.TemporaryDirectory() as tmp:
        tok, tok2 = toks.clip_tokenizer(Path(tmp)), toks.t5_tokenizer(Path(tmp))
    torch.manual_seed(0)
    with _build_on(device, dtype):
        clip, t5 = _flux_encoders(scale, tok, tok2)
        transformer = _flux_transformer(scale)
        vae = _vae(scale)
    return FluxPipeline(scheduler=_scheduler(), vae=vae, text_encoder=clip, tokenizer=tok, text_encoder_2=t5,
                        tokenizer_2=tok2, transformer=transformer)


def build_ovis(scale: str = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    from diffusers import OvisImagePipeline, OvisImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tiny = scale == "tiny"
    with tempfile.TemporaryDirectory() as tmp:
        tok = toks.qwen_tokenizer(Path(tmp))
    hidden = 32 if tiny else 2048
    torch.manual_seed(0)
    with _build_on(device, dtype):
        encoder = Qwen3Model(Qwen3Config(  # the bare model: the pipeline reads last_hidden_state
            vocab_size=len(tok) if tiny else 151936, hidden_size=hidden, intermediate_size=64 if tiny else 6144,
            num_hidden_layers=2 if tiny else 28, num_attention_heads=4 if tiny else 16,
            num_key_value_heads=2 if tiny else 8, head_dim=8 if tiny else 128, max_position_embeddings=1024,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
        ))
        if tiny:
            transformer = OvisImageTransformer2DModel(
                patch_size=1, in_channels=64, out_channels=64, num_layers=1, num_single_layers=1,
                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=hidden, axes_dims_rope=(4, 4, 8),
            )
        else:
            transformer = OvisImageTransformer2DModel()  # the library defaults are Ovis-Image-7B's
        vae = _vae(scale)
    return OvisImagePipeline(scheduler=_scheduler(), vae=vae, text_encoder=encoder, tokenizer=tok,
                             transformer=transformer)


def build(family: str, scale: str = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    pipe = (build_flux if family == "flux" else build_ovis)(scale, device, dtype)
    for module in pipe.components.values():
        # Constructors leave modules in training mode; from_pretrained, which the service uses, does not.
        # T5's dropout (rate 0.1) would otherwise run in every benchmarked text encoding.
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe
