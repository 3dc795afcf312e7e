"""What feeds fp8 attention in a FLUX single block, compiled as the service compiles it: RMS norm of Q and K
per head, RoPE, the e4m3 casts (services/image/attention_fp8.py) and V's scale. Times diffusers' interleaved
RoPE against the same rotation on half-split head dimensions (a fixed permutation of Q's and K's head
dimensions leaves every q.k product unchanged), and writes inductor's generated code to $OUT.

    python benchmarks/image_gpu_qknorm.py
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.image import attention_fp8, reductions
from services.image.speed import time_cuda

OUT = Path(os.environ.get("OUT", "/tmp"))
bench = functools.partial(time_cuda, reps=10, warmup=3, calls=10)
S, H, D = 4608, 24, 128


def interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    from diffusers.models.embeddings import apply_rotary_emb

    return apply_rotary_emb(x, (cos, sin), sequence_dim=1)


def half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    from diffusers.models.embeddings import apply_rotary_emb

    return apply_rotary_emb(x, (cos, sin), sequence_dim=1, use_real_unbind_dim=-2)


def flipped(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' interleaved RoPE with the partner element taken by a flip instead of unbind + stack:
    the same products, so the same bits, but one unmasked load per element (services/image/rope.py)."""
    from services.image import rope

    return rope.apply_rotary_emb(x, (cos, sin), sequence_dim=1)


def producer(qkv, wq, wk, cos, sin, rope, qk_descale):
    q, k, v = (x.unflatten(-1, (H, D)) for x in qkv.chunk(3, dim=-1))
    q, k = torch.nn.functional.rms_norm(q, (D,), wq, 1e-6), torch.nn.functional.rms_norm(k, (D,), wk, 1e-6)
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    v8, v_descale = attention_fp8.quantize_v(v)
    return attention_fp8.quantize_qk(q, qk_descale), attention_fp8.quantize_qk(k, qk_descale), v8, v_descale


def whole(qkv, wq, wk, cos, sin, rope, qk_descale):
    q, k, v = (x.unflatten(-1, (H, D)) for x in qkv.chunk(3, dim=-1))
    q, k = torch.nn.functional.rms_norm(q, (D,), wq, 1e-6), torch.nn.functional.rms_norm(k, (D,), wk, 1e-6)
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    return attention_fp8.attention(q, k, v, qk_descale).flatten(2)


def main() -> None:
    from torch._inductor.utils import run_and_get_code

    reductions.install()
    torch.manual_seed(0)
    qkv = torch.randn(1, S, 3 * H * D, device="cuda", dtype=torch.bfloat16)
    wq, wk = (torch.rand(D, device="cuda", dtype=torch.bfloat16) + 0.5 for _ in range(2))
    cos, sin = (torch.randn(S, D, device="cuda", dtype=torch.float32) for _ in range(2))
    qk_descale = D**0.5 * 1.5 / attention_fp8.E4M3_MAX
    rows = []
    for name, fn in (("producer", producer), ("norm+RoPE+fp8 attention", whole)):
        for rope in (interleaved, flipped, half_split):
            compiled = torch.compile(functools.partial(fn, rope=rope, qk_descale=qk_descale), fullgraph=True,
                                     dynamic=False)
            _, code = run_and_get_code(compiled, qkv, wq, wk, cos, sin)
            (OUT / f"qknorm_{name.split('+')[0]}_{rope.__name__}.py").write_text("\n\n".join(code))
            ms = bench(lambda c=compiled: c(qkv, wq, wk, cos, sin))
            rows.append((name, rope.__name__, ms))
    x = torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16)
    same = torch.equal(interleaved(x, cos, sin), flipped(x, cos, sin))
    print(f"flipped RoPE bitwise equal to diffusers': {same}")
    print("| part | RoPE | ms |\n|---|---|---|")
    for name, rope, ms in rows:
        print(f"| {name} | {rope} | {ms:.4f} |")


if __name__ == "__main__":
    main()
