"""Q/K RMS norm + RoPE (+ the fp8 cast) in one kernel, through an attention processor of our own for FLUX
and Ovis (GPU speed path, with compile and fused QKV).

Why: compiled as diffusers writes it (RMSNorm modules, concatenation with the text stream, RoPE), inductor
emits a two-pass reduction per head with masked partner loads: 0.11-0.14 ms a FLUX single block and several
kernels a double block, ~8 ms a forward, where the bytes need ~2.5 ms. One Triton program here reads 32
tokens of one head of Q or K once, normalises, rotates the (even, odd) pairs in registers and writes bf16 (or
e4m3 for the fp8 attention, with its static scale), text stream first. Rounding follows diffusers' (RMS norm
rounded, times the weight rounded, RoPE in float32 rounded), so outputs match to bf16 rounding.

The processor keeps diffusers' flow otherwise (fused QKV projections, V concatenation, attention through
diffusers' dispatch or services/image/attention_fp8.py, output projections); anything it does not cover (an
attention mask, no rotary embedding, unfused projections) goes to the processor it replaced. On the CPU the
op computes the same arithmetic with PyTorch (tests).
"""

from __future__ import annotations

from typing import Any

import torch

from services.image import attention_fp8


def _eps(norm: torch.nn.Module, dtype: torch.dtype) -> float:
    eps = getattr(norm, "eps", None)
    return float(eps) if eps is not None else float(torch.finfo(dtype).eps)


def _allocate(q: torch.Tensor, q_txt: torch.Tensor | None, heads: int, out_scale: float) -> torch.Tensor:
    b, n, hd = q.shape
    n_txt = 0 if q_txt is None else q_txt.shape[1]
    dtype = attention_fp8.E4M3 if out_scale > 0 else q.dtype
    return torch.empty(b, n_txt + n, heads, hd // heads, device=q.device, dtype=dtype)


def run(q, k, wq, wk, cos, sin, eps, heads, out_scale, q_txt, k_txt, wq_txt, wk_txt, eps_txt,
        traced: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel for the text stream (if any) then the image stream into one (batch, tokens, heads,
    dim) output each for Q and K."""
    from services.image import triton_kernels

    qo, ko = _allocate(q, q_txt, heads, out_scale), _allocate(k, k_txt, heads, out_scale)
    offset = 0
    if q_txt is not None:
        triton_kernels.qk_norm_rope_launch(q_txt, k_txt, wq_txt, wk_txt, cos, sin, eps_txt, qo, ko, 0, out_scale,
                                           traced)
        offset = q_txt.shape[1]
    triton_kernels.qk_norm_rope_launch(q, k, wq, wk, cos, sin, eps, qo, ko, offset, out_scale, traced)
    return qo, ko


def reference(q, k, wq, wk, cos, sin, eps, heads, out_scale, q_txt, k_txt, wq_txt, wk_txt, eps_txt):
    """The kernel's arithmetic with PyTorch ops (CPU, tests): diffusers' RMSNorm rounding, then its RoPE."""
    from diffusers.models.embeddings import apply_rotary_emb

    def norm(x, w, e):
        x = x.unflatten(-1, (heads, -1))
        y = (x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + e)).to(x.dtype)
        return y * w

    qs, ks = norm(q, wq, eps), norm(k, wk, eps)
    if q_txt is not None:
        qs = torch.cat([norm(q_txt, wq_txt, eps_txt), qs], dim=1)
        ks = torch.cat([norm(k_txt, wk_txt, eps_txt), ks], dim=1)
    qs, ks = (apply_rotary_emb(x, (cos, sin), sequence_dim=1) for x in (qs, ks))
    if out_scale > 0:
        qs, ks = (attention_fp8.quantize_qk(x, 1.0 / out_scale) for x in (qs, ks))
    return qs, ks


@torch.library.custom_op("modelplat_image::qk_norm_rope", mutates_args=())
def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor, eps: float, heads: int, out_scale: float, q_txt: torch.Tensor | None,
                 k_txt: torch.Tensor | None, wq_txt: torch.Tensor | None, wk_txt: torch.Tensor | None,
                 eps_txt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised, rotated Q and K, (batch, text + image tokens, heads, dim): bf16, or e4m3 holding the value
    times out_scale when out_scale > 0. q, k: (batch, tokens, heads * dim) rows, dims contiguous. Eager and
    CPU entry; compiled CUDA graphs use triton_kernels.qk_norm_rope."""
    args = (q, k, wq, wk, cos, sin, eps, heads, out_scale, q_txt, k_txt, wq_txt, wk_txt, eps_txt)
    if q.is_cuda:
        return run(*args)
    qo, ko = reference(*args)
    return qo.contiguous(), ko.contiguous()


@qk_norm_rope.register_fake
def _(q, k, wq, wk, cos, sin, eps, heads, out_scale, q_txt, k_txt, wq_txt, wk_txt, eps_txt):
    return _allocate(q, q_txt, heads, out_scale), _allocate(k, k_txt, heads, out_scale)


class Processor:
    """Stands in for diffusers' FluxAttnProcessor / OvisImageAttnProcessor (same call signature)."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None) -> Any:
        if attention_mask is not None or image_rotary_emb is None or not getattr(attn, "fused_projections", False):
            self.original._attention_backend = self._attention_backend
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        text = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        q_txt = k_txt = v_txt = None
        if text:
            q_txt, k_txt, v_txt = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        backend = self._attention_backend
        fp8 = isinstance(backend, attention_fp8.Backend)
        op = qk_norm_rope
        if torch.compiler.is_compiling():  # the Triton op that inductor launches itself
            from services.image import triton_kernels

            op = triton_kernels.qk_norm_rope
        cos, sin = image_rotary_emb
        dtype = hidden_states.dtype
        query, key = op(q, k, attn.norm_q.weight, attn.norm_k.weight, cos, sin, _eps(attn.norm_q, dtype), attn.heads,
                        1.0 / backend.qk_descale if fp8 else 0.0, q_txt, k_txt,
                        attn.norm_added_q.weight if text else None, attn.norm_added_k.weight if text else None,
                        _eps(attn.norm_added_q, dtype) if text else 0.0)
        value = (torch.cat([v_txt, v], dim=1) if text else v).unflatten(-1, (attn.heads, -1))
        if fp8:
            out = attention_fp8.attention_quantized_qk(query, key, value, backend.qk_descale)
        else:
            from diffusers.models.attention_dispatch import dispatch_attention_fn

            out = dispatch_attention_fn(query, key, value, backend=backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(dtype)
        if not text:
            return out
        n_txt = encoder_hidden_states.shape[1]
        txt_out, img_out = out.split_with_sizes([n_txt, out.shape[1] - n_txt], dim=1)
        img_out = attn.to_out[1](attn.to_out[0](img_out.contiguous()))
        return img_out, attn.to_add_out(txt_out.contiguous())


def _rms_norms(attn: Any) -> bool:
    names = ["norm_q", "norm_k"] + (["norm_added_q", "norm_added_k"] if attn.added_kv_proj_dim is not None else [])
    return all(getattr(getattr(attn, n, None), "weight", None) is not None for n in names)


def install(transformer: torch.nn.Module) -> int:
    """Give every fused-QKV attention with RMS-normed Q and K and a power-of-two head size (all 57 of FLUX's,
    all of Ovis') our processor; call after fuse_qkv and the attention backend choice (it keeps the backend).
    Returns how many."""
    count = 0
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is None or isinstance(processor, Processor) or not hasattr(module, "norm_q"):
            continue
        dim = module.head_dim
        if getattr(module, "fused_projections", False) and _rms_norms(module) and dim & (dim - 1) == 0:
            module.processor = Processor(processor)
            count += 1
    return count
