"""The VAE decoder's mid-block attention as two matmuls and a softmax, for the compiled decoder.

FLUX's (and Ovis') VAE attends over every latent pixel with one head of 512 channels: 16384 tokens at 1024px.
No flash kernel in PyTorch takes a head of 512; SDPA falls back to the memory-efficient kernel, which took
4.6 ms of a 1024px decode on an H100 (~120 TFLOP/s, benchmarks/image_gpu_vae.py). cuBLAS does the two products
at its usual rate. The scores are kept in float32 (the matmul accumulates and writes float32, as a flash kernel
keeps them in registers) and the softmax is taken in float32; its weights are rounded to the value dtype for
the second product, as flash kernels do. Queries go in chunks so that the scores stay within `max_scores`
elements (1 GiB in float32 by default): one chunk at 1024px (16384 tokens), sixteen at 2048px (65536).
"""

from __future__ import annotations

from typing import Any

import torch

MAX_SCORES = 1 << 28


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
              max_scores: int = MAX_SCORES) -> torch.Tensor:
    """softmax(q k^T * scale) v for (batch, tokens, dim) tensors, float32 scores, queries in chunks."""
    kt = k.transpose(1, 2)
    step = max(1, max_scores // max(1, k.shape[1]))
    outs = [torch.bmm(_softmax(_scores(q[:, i:i + step], kt), scale, v.dtype), v) for i in range(0, q.shape[1], step)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _scores(q: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
    if q.is_cuda and q.dtype != torch.float32:  # bf16/fp16 operands, float32 accumulation and output
        return torch.bmm(q, kt, out_dtype=torch.float32)
    return torch.bmm(q.float(), kt.float())  # the CPU has no mixed-dtype bmm: the same products in float32


def _softmax(scores: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.softmax(scores * scale, dim=-1).to(dtype)


class MidBlockAttention:
    """A diffusers attention processor for the VAE's self-attention over an image (AttnProcessor2_0's path
    for that case, with `attention` in place of SDPA). Any other use goes to the processor it replaced."""

    def __init__(self, fallback: Any, max_scores: int = MAX_SCORES) -> None:
        self.fallback = fallback
        self.max_scores = max_scores

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        plain = (hidden_states.ndim == 4 and encoder_hidden_states is None and attention_mask is None
                 and attn.spatial_norm is None and attn.norm_q is None and attn.norm_k is None and not args
                 and not kwargs)
        if not plain:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        b, c, h, w = hidden_states.shape
        x = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        q, k, v = (_heads(proj(x), attn.heads) for proj in (attn.to_q, attn.to_k, attn.to_v))
        out = attention(q, k, v, q.shape[-1] ** -0.5, self.max_scores)
        out = out.view(b, attn.heads, h * w, -1).transpose(1, 2).reshape(b, h * w, -1)
        out = attn.to_out[1](attn.to_out[0](out))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, tokens, heads * d) -> (b * heads, tokens, d)."""
    b, n, inner = x.shape
    return x.view(b, n, heads, inner // heads).transpose(1, 2).reshape(b * heads, n, inner // heads)


def install(decoder: torch.nn.Module) -> int:
    """Give every self-attention layer of `decoder` a MidBlockAttention; returns how many."""
    from diffusers.models.attention_processor import Attention

    layers = [m for m in decoder.modules() if isinstance(m, Attention)]
    for m in layers:
        if not isinstance(m.processor, MidBlockAttention):
            m.set_processor(MidBlockAttention(m.processor))
    return len(layers)


def uninstall(decoder: torch.nn.Module) -> None:
    for m in decoder.modules():
        if isinstance(getattr(m, "processor", None), MidBlockAttention):
            m.set_processor(m.processor.fallback)
