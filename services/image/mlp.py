"""FLUX's and Ovis' MLP ends without the extra pass over the 4x-wide hidden tensor (GPU speed path).

Each block ends its MLP with act(up projection) feeding a down projection (FLUX: GELU, Ovis: SwiGLU);
single blocks concatenate the attention output in front of it. Compiled as written, that is one more pass
over a 4608 x 12288 (or x 15360) tensor per block after cuBLAS, and in fp8 the per-row quantisation of those
long rows reads them twice. Measured per FLUX single block on an H100 (benchmarks/image_gpu_rowquant.py):
- bf16 (FLUX only; no epilogue exists for SwiGLU): GELU in cuBLASLt's matmul epilogue and the output
  projection split into two accumulating matmuls (no cat): 1.131 ms against 1.220 ms.
- fp8 (both): one Triton pass applies the activation and the up projection's bias, concatenates, finds the
  row's scale and casts: 0.12 ms against inductor's 0.31 ms (0.21 ms inside the compiled block).
Whole forwards: FLUX bf16 132.8 -> 129.3 ms, fp8 102.4 -> 95.2 ms; Ovis fp8 63.5 -> 60.8 ms.

Blocks keep their modules; single blocks switch to a subclass whose forward calls `mlp_out(attn, mlp_in(x))`
instead of `proj_out(cat(attn, act(proj_mlp(x))))`. With fp8 attention too, the single blocks' attention output
reaches that pass as cuDNN wrote it, e4m3 plus one scale (services/image/attention_fp8.single_stream), instead
of being dequantised in a pass of its own first: FLUX fp8 forward 83.3 -> 81.8-82.2 ms. The subclass keeps
the class name, because diffusers' regional compile matches blocks by name. Without a CUDA device the ops fall
back to plain PyTorch (CPU tests).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from services.image import attention_fp8
from services.image import fp8 as fp8_mod

E4M3 = fp8_mod.E4M3


def _activation(mlp: torch.Tensor, bias: torch.Tensor | None, swiglu: bool) -> torch.Tensor:
    y = mlp if bias is None else mlp + bias
    if swiglu:  # diffusers' SwiGLU and Ovis' single blocks: value half, then gate half
        h, g = y.chunk(2, dim=-1)
        return h * F.silu(g)
    return F.gelu(y, approximate="tanh")


@torch.library.custom_op("modelplat_image::act_quant_rows", mutates_args=())
def act_quant_rows(attn: torch.Tensor | None, mlp: torch.Tensor, bias: torch.Tensor | None, swiglu: bool,
                   attn_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cat(attn, act(mlp + bias)) per row -> e4m3 values and float32 scales (fp8.py's arithmetic), in one pass;
    act is GELU(tanh) or SwiGLU. The up projection's bias comes here: added by inductor in front of an opaque
    op it would be a pass of its own. With `attn_scale`, attn is the fp8 attention's e4m3 output, dequantised
    here as attention_fp8.dequantize does. Eager/CPU entry; compiled CUDA graphs use triton_kernels' op."""
    if mlp.is_cuda:
        from services.image import triton_kernels

        return triton_kernels.quantize(attn, mlp, bias, swiglu, attn_scale=attn_scale)
    if attn_scale is not None and attn is not None:
        attn = (attn.float() * attn_scale).to(mlp.dtype)
    h = _activation(mlp, bias, swiglu)
    return fp8_mod._rowwise(h if attn is None else torch.cat([attn, h], dim=-1))


@act_quant_rows.register_fake
def _(attn, mlp, bias, swiglu, attn_scale=None):
    k = mlp.shape[1] // (2 if swiglu else 1) + (0 if attn is None else attn.shape[1])
    return mlp.new_empty(mlp.shape[0], k, dtype=E4M3), mlp.new_empty(mlp.shape[0], 1, dtype=torch.float32)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


class LinearGelu(torch.nn.Module):
    """nn.Linear followed by GELU(tanh), as one matmul with the activation in its epilogue."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return F.gelu(F.linear(x, self.weight, self.bias), approximate="tanh")
        # cuBLASLt's GELU_BIAS epilogue (tanh GELU); inductor keeps this aten op as one extern call
        y = torch._addmm_activation(self.bias, _rows(x), self.weight.t(), use_gelu=True)
        return y.reshape(*x.shape[:-1], self.weight.shape[0])


@torch.library.custom_op("modelplat_image::split_out", mutates_args=())
def split_out(attn: torch.Tensor, h: torch.Tensor, weight_attn: torch.Tensor, weight_mlp: torch.Tensor,
              bias: torch.Tensor) -> torch.Tensor:
    """attn @ Wa.T + b (bias in cuBLASLt's epilogue), then h @ Wm.T added in place (beta = 1). One op, because
    inductor lowers an out-of-place `addmm(y, h, Wm.T)` as a copy of y into a new buffer first: a 28 MB
    memcpy per FLUX single block, 0.65 ms a forward (benchmarks/image_gpu_profile.py, session 7)."""
    y = torch.addmm(bias, attn, weight_attn.t())
    return y.addmm_(h, weight_mlp.t())


@split_out.register_fake
def _(attn, h, weight_attn, weight_mlp, bias):
    return attn.new_empty(attn.shape[0], weight_attn.shape[0])


class SplitOut(torch.nn.Module):
    """proj_out(cat(attn, h)) as attn @ Wa.T + h @ Wm.T + b: two accumulating matmuls, no concatenated copy."""

    def __init__(self, proj_out: torch.nn.Linear, split: int) -> None:
        super().__init__()
        w = proj_out.weight.data
        self.weight_attn = torch.nn.Parameter(w[:, :split].contiguous(), requires_grad=False)
        self.weight_mlp = torch.nn.Parameter(w[:, split:].contiguous(), requires_grad=False)
        self.bias = proj_out.bias
        self.in_features, self.out_features = proj_out.in_features, proj_out.out_features

    def forward(self, attn: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        y = split_out(_rows(attn), _rows(h), self.weight_attn, self.weight_mlp, self.bias)
        return y.reshape(*attn.shape[:-1], -1)


class Fp8ActOut(torch.nn.Module):
    """An fp8 down projection whose input arrives before its activation (and, in single blocks, beside the
    attention output): activation, concatenation and per-row quantisation in one pass, then the fp8 matmul."""

    def __init__(self, linear: fp8_mod.Fp8Linear, up: fp8_mod.Fp8Linear, swiglu: bool) -> None:
        super().__init__()
        self.linear, self.swiglu = linear, swiglu
        # the up projection's bias moves into the quantising pass (`up` now returns x @ W.T alone)
        self.up_bias, up.bias = up.bias, None

    def forward(self, attn: torch.Tensor | None, mlp: torch.Tensor,
                attn_scale: torch.Tensor | None = None) -> torch.Tensor:
        lin = self.linear
        op = act_quant_rows
        if mlp.is_cuda and torch.compiler.is_compiling():  # the Triton op that inductor launches itself
            from services.image import triton_kernels

            op = triton_kernels.act_quant_rows
        xq, x_scale = op(None if attn is None else _rows(attn), _rows(mlp), self.up_bias, self.swiglu, attn_scale)
        return lin.matmul(xq, x_scale, mlp.dtype).reshape(*mlp.shape[:-1], lin.out_features)


class _ActInput(torch.nn.Module):
    """Down projection of a FeedForward whose activation was moved into it (fp8): forward(pre-activation)."""

    def __init__(self, out: Fp8ActOut) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(None, x)


def _single_forward(self: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    temb: torch.Tensor, image_rotary_emb: Any = None,
                    joint_attention_kwargs: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers 0.42's FluxSingleTransformerBlock.forward (Ovis' is the same apart from its SwiGLU) with
    `mlp_out(attn, mlp_in(x))` for the MLP branch."""
    text_seq_len = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    residual = hidden_states
    norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
    mlp_hidden_states = self.mlp_in(norm_hidden_states)
    # fp8 attention feeding the fp8 MLP quantisation: its e4m3 output goes in as it is
    e4m3 = (attention_fp8.single_stream(self.attn, norm_hidden_states, image_rotary_emb)
            if isinstance(self.mlp_out, Fp8ActOut) and not joint_attention_kwargs else None)
    if e4m3 is not None:
        out = self.mlp_out(e4m3[0], mlp_hidden_states, attn_scale=e4m3[1])
    else:
        attn_output = self.attn(hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb,
                                **(joint_attention_kwargs or {}))
        out = self.mlp_out(attn_output, mlp_hidden_states)
    hidden_states = residual + gate.unsqueeze(1) * out
    if hidden_states.dtype == torch.float16:
        hidden_states = hidden_states.clip(-65504, 65504)
    return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


_SUBCLASSES: dict[type, type] = {}


def _fused_class(cls: type) -> type:
    if cls not in _SUBCLASSES:
        # same name: diffusers' compile_repeated_blocks finds blocks by class name
        _SUBCLASSES[cls] = type(cls.__name__, (cls,), {"forward": _single_forward, "__module__": __name__})
    return _SUBCLASSES[cls]


def _gelu_tanh(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.GELU) and module.approximate == "tanh"


def _plain_linears(*modules: torch.nn.Module) -> bool:
    """bf16 fusions need ordinary Linear layers with a bias (cuBLASLt's GELU_BIAS epilogue)."""
    return all(type(m) is torch.nn.Linear and m.bias is not None for m in modules)


def _fp8(*modules: torch.nn.Module) -> bool:
    return all(isinstance(m, fp8_mod.Fp8Linear) for m in modules)


def _fuse_single(block: Any, swiglu: bool) -> bool:
    if _fp8(block.proj_mlp, block.proj_out):
        block.mlp_in, block.mlp_out = block.proj_mlp, Fp8ActOut(block.proj_out, block.proj_mlp, swiglu)
    elif not swiglu and _plain_linears(block.proj_mlp, block.proj_out):
        block.mlp_in = LinearGelu(block.proj_mlp)
        block.mlp_out = SplitOut(block.proj_out, block.proj_out.in_features - block.mlp_hidden_dim)
    else:
        return False
    del block.proj_mlp, block.proj_out, block.act_mlp
    block.__class__ = _fused_class(type(block))
    return True


def _fuse_feed_forward(ff: Any, swiglu: bool) -> bool:
    act, down = ff.net[0], ff.net[2]
    if _fp8(act.proj, down):
        ff.net[0], ff.net[2] = act.proj, _ActInput(Fp8ActOut(down, act.proj, swiglu))
    elif not swiglu and _plain_linears(act.proj):
        ff.net[0] = LinearGelu(act.proj)
    else:
        return False
    return True


def fuse(transformer: torch.nn.Module) -> int:
    """Rewire FLUX's and Ovis' blocks (after fp8 quantisation, before compile); returns the blocks changed.
    FLUX (GELU): bf16 and fp8. Ovis (SwiGLU, no matmul epilogue for it): fp8 only."""
    from diffusers.models.activations import GELU, SwiGLU
    from diffusers.models.transformers import transformer_flux as flux
    from diffusers.models.transformers import transformer_ovis_image as ovis

    changed = 0
    for block in list(transformer.modules()):
        if hasattr(block, "mlp_out"):  # fused already (fuse is idempotent)
            continue
        if isinstance(block, flux.FluxSingleTransformerBlock) and _gelu_tanh(block.act_mlp):
            changed += _fuse_single(block, swiglu=False)
        elif isinstance(block, ovis.OvisImageSingleTransformerBlock) and isinstance(block.act_mlp, torch.nn.SiLU):
            changed += _fuse_single(block, swiglu=True)
        elif isinstance(block, (flux.FluxTransformerBlock, ovis.OvisImageTransformerBlock)):
            done = False
            for ff in (block.ff, block.ff_context):
                act = ff.net[0]
                if isinstance(act, GELU) and act.approximate == "tanh":
                    done |= _fuse_feed_forward(ff, swiglu=False)
                elif isinstance(act, SwiGLU):
                    done |= _fuse_feed_forward(ff, swiglu=True)
            changed += done
    return changed
