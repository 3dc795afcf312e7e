"""Dynamic float8 linear layers (e4m3, per-row scales) on torch._scaled_mm: the same arithmetic as
torchao's Float8DynamicActivationFloat8WeightConfig(PerRow), without tensor-subclass parameters.

Why our own: with torchao's subclass weights, regional torch.compile recompiled every one of FLUX's 57
blocks (481 s cold compile on an H100, measured with benchmarks/image_gpu.py); plain float8 buffers are
ordinary graph inputs, so one compiled graph serves all blocks of a class. LOSSY: weights and activations
are rounded to 8-bit floats (3 mantissa bits) with one scale per row.
"""

from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
# Hopper's fast fp8 accumulation, as torchao uses for inference: measurably faster, slightly less exact.
FAST_ACCUM = True


def _rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, k) -> float8 values and float32 per-row scales, so that x ~= q * scale."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class Fp8Linear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = _rowwise(linear.weight.data)
        self.register_buffer("weight_fp8", q)  # (out, in), row-major; .t() is the column-major B operand
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out)
        self.bias = linear.bias

    def matmul(self, xq: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """Quantised rows (and their scales) times the fp8 weight, plus the bias: (rows, out_features)."""
        y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale,
                             out_dtype=out_dtype, use_fast_accum=FAST_ACCUM)
        return y if self.bias is None else y + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, x_scale = _rowwise(x.reshape(-1, self.in_features))
        return self.matmul(xq, x_scale, x.dtype).reshape(*x.shape[:-1], self.out_features)


def quantize(model: torch.nn.Module, keep: callable) -> int:
    """Replace every nn.Linear for which keep(module, qualified_name) is true; returns the count."""
    targets = [(name, m) for name, m in model.named_modules() if keep(m, name)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Fp8Linear(linear))
    return len(targets)
