"""Single blocks' attention with the query/key RMS norms and the rotary embedding in one kernel (GPU path).

In FLUX's and Ovis' single blocks the fused QKV projection is followed by RMS norms of the query and key
heads and the rotary embedding. Inductor fuses those into one kernel, but it ran at about 1 TB/s on an H100
(0.11-0.14 ms a FLUX single block, benchmarks/image_gpu_profile.py); services/image/triton_kernels.py's
version reads each token's query and key once. The processor below is diffusers' for single blocks with that
one call swapped in; anything else (double blocks, no fused QKV) goes to diffusers' own code.
"""

from __future__ import annotations

from typing import Any

import torch


def _norm_eps(norm: torch.nn.RMSNorm, dtype: torch.dtype) -> float:
    return norm.eps if norm.eps is not None else torch.finfo(dtype).eps


def norm_rope(attn: Any, qkv: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, seq, 3 * heads * dim) fused projection -> normed, rotated query and key (batch, seq, heads, dim)."""
    cos, sin = rotary
    eps = _norm_eps(attn.norm_q, qkv.dtype)
    if qkv.is_cuda:
        from services.image import triton_kernels as tk

        args = (qkv, attn.norm_q.weight, attn.norm_k.weight, cos, sin, attn.heads, eps)
        # inside a compiled block: the triton_op, launched by inductor; eagerly: a direct launch
        return tk.qk_norm_rope(*args) if torch.compiler.is_compiling() else tk.qk_norm_rope_launch(*args)
    from diffusers.models.embeddings import apply_rotary_emb

    q, k, _ = (x.unflatten(-1, (attn.heads, -1)) for x in qkv.chunk(3, dim=-1))
    return (apply_rotary_emb(attn.norm_q(q), rotary, sequence_dim=1),
            apply_rotary_emb(attn.norm_k(k), rotary, sequence_dim=1))


class _SingleBlockAttention:
    """Mixed in front of diffusers' FluxAttnProcessor / OvisImageAttnProcessor."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None) -> torch.Tensor:
        if encoder_hidden_states is not None or image_rotary_emb is None or not attn.fused_projections:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        qkv = attn.to_qkv(hidden_states)
        query, key = norm_rope(attn, qkv, image_rotary_emb)
        value = qkv[..., 2 * attn.heads * attn.head_dim:].unflatten(-1, (attn.heads, -1))
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)
        return out.flatten(2, 3).to(query.dtype)


_CLASSES: dict[type, type] = {}


def _eligible(attn: Any) -> bool:
    norms = (getattr(attn, "norm_q", None), getattr(attn, "norm_k", None))
    return (getattr(attn, "fused_projections", False) and getattr(attn, "added_kv_proj_dim", None) is None
            and all(isinstance(n, torch.nn.RMSNorm) and n.weight is not None for n in norms)
            and attn.head_dim % 2 == 0 and (attn.head_dim // 2) & (attn.head_dim // 2 - 1) == 0)  # Triton tiles


def fuse(transformer: torch.nn.Module) -> int:
    """Swap the processor of every single block's attention (after QKV fusion); returns how many."""
    changed = 0
    for name, block in transformer.named_children():
        if name != "single_transformer_blocks":
            continue
        for sub in block:
            attn = sub.attn
            cls = type(attn.processor)
            if issubclass(cls, _SingleBlockAttention) or not _eligible(attn):
                continue
            if cls not in _CLASSES:
                _CLASSES[cls] = type(f"NormRope{cls.__name__}", (_SingleBlockAttention, cls), {})
            attn.set_processor(_CLASSES[cls]())
            changed += 1
    return changed
