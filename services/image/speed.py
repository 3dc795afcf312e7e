"""The GPU speed path, applied to a loaded pipeline: fused QKV, fp8, fused MLP ends, attention backend,
regional compile, the transformer forward as one CUDA graph.

Order matters: QKV fusion creates the Linear layers that fp8 then quantizes (not the adaptive norms'), the MLP
ends are rewired around fp8's layers, and compilation comes after so that it traces the final modules (it runs
lazily, at the first call); the CUDA graph wraps the compiled forward, and the modulation tables' forward wraps
the graph's, since it copies each step's rows in before a replay. On the CPU only the modulation tables are on
by default; QKV fusion, MLP rewiring and compilation when asked for.

Measured on H100s with benchmarks/image_gpu.py (full pipelines, 1024px), FLUX.1-dev a step: 183 ms eager
bf16 -> 135 ms fused QKV + regional compile -> 129 ms with the MLP ends rewired (services/image/mlp.py) ->
92-94 ms with fp8 matmuls (services/image/fp8.py) -> 84.5-87.7 ms with cuDNN's fp8 attention
(services/image/attention_fp8.py) under a CUDA graph (services/image/cuda_graphs.py), which the fp8
attention needs: its host work per call made the forward wait on the CPU without one. Outside the steps the
text encoders are compiled and graphed too (37 -> 21 ms an image). Every block's adaptive-norm rows come
from one matmul per image (services/image/modulation.py): FLUX bf16 3.59 -> 3.53 s an image, fp8 2.39 -> 2.33.
The VAE decode takes 27 ms instead of 38.6 (compile_vae), and diffusers' device look-ups, ~8 ms of host time
before the text encoders, are answered once at load (services/image/placement.py).
fp8 is LOSSY (dynamic per-row float8 matmuls with fast accumulation; Q, K, V, softmax weights and attention output in
e4m3): images differ from bf16; it is off unless the config's `diffusers.fp8` is true, and
`diffusers.fp8_attention: false` keeps bf16 attention within it. Outside the fp8 attention, the attention
kernel is timed at load between PyTorch's backends (inside compiled blocks cuDNN's kernel runs).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("image.speed")

# diffusers' names for the attention kernels we choose between (all inside PyTorch, no downloads)
ATTENTION_CANDIDATES = ("native", "_native_cudnn")


@dataclass(frozen=True)
class SpeedOptions:
    compile: bool = False
    fuse_qkv: bool = False
    fp8: bool = False
    fp8_impl: str = "scaled_mm"  # scaled_mm: services/image/fp8.py (compiles once per block class); torchao
    compile_vae: bool | None = None  # default: with `compile`
    attention: str = "auto"  # auto = fastest measured at load on a GPU; or a diffusers backend name
    cache_dir: Path | None = None
    long_row_reductions: bool = True  # with compile on a GPU: one-pass rows up to 4096 (services/image/reductions.py)
    fuse_mlp: bool | None = None  # FLUX MLP ends (services/image/mlp.py); default: on with a GPU; True forces it
    fp8_attention: bool | None = None  # cuDNN fp8 attention (services/image/attention_fp8.py); default: with fp8
    cuda_graph: bool | None = None  # the transformer forward as one CUDA graph (services/image/cuda_graphs.py);
    # default: with compile on a GPU
    cuda_graph_shapes: int = 4  # input shapes kept as graphs (each holds one forward's activations)
    modulation_table: bool = True  # every step's adaptive-norm rows in one matmul (services/image/modulation.py)
    pin_devices: bool = True  # diffusers' device look-ups answered once (services/image/placement.py)


@dataclass
class Applied:
    """What was actually applied (reported by /healthz and the benchmark)."""

    steps: list[str] = field(default_factory=list)
    attention: str = "native"
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"applied": self.steps, "attention": self.attention, "seconds": round(self.seconds, 2)}


def configure_compile_cache(cache_dir: Path | None) -> None:
    """Persist inductor/triton artifacts so a restart reuses compiled kernels instead of paying again."""
    if cache_dir is None:
        return
    cache_dir = Path(cache_dir)
    (cache_dir / "inductor").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache_dir / "triton"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True


def _raise_recompile_limit(limit: int = 64) -> None:
    # Each image size / batch shape is its own specialised graph (dynamic=False keeps the kernels fast);
    # the default limit of 8 would silently fall back to eager after a few sizes.
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(limit, getattr(dynamo_config, name)))


def _block_linear(module: torch.nn.Module, fqn: str) -> bool:
    # Only the repeated blocks' large matmuls: they hold >95% of the FLOPs; the small embedders stay bf16, and
    # so do the adaptive norms' one-row matmuls (services/image/modulation.py replaces them).
    return (isinstance(module, torch.nn.Linear) and "transformer_blocks" in fqn and ".norm" not in fqn
            and module.in_features >= 1024 and module.out_features >= 1024)


def quantize_fp8(transformer: torch.nn.Module, impl: str = "scaled_mm") -> None:
    if impl == "scaled_mm":
        from services.image import fp8

        fp8.quantize(transformer, _block_linear)
        return
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=_block_linear)


def fuse_qkv(transformer: torch.nn.Module) -> int:
    """Fuse Q/K/V (and the text stream's added Q/K/V) into one matmul each; returns modules fused.
    Done per attention module because not every transformer class has the model-level helper (Ovis)."""
    from diffusers.models.attention import AttentionModuleMixin

    fused = 0
    for module in transformer.modules():
        if isinstance(module, AttentionModuleMixin) and module._supports_qkv_fusion:
            module.fuse_projections()
            fused += 1
    return fused


def compile_text_encoders(pipe: Any) -> int:
    """Compile the text encoders' forwards; returns how many. FLUX's encode_prompt (CLIP-L + T5-XXL at 512
    tokens), graphed both ways, went from 37.0 to 21.3 ms an image on an H100 (benchmarks/image_gpu_other.py;
    12.4 ms of GPU time in 578 kernels): T5's float32 norms, softmax and GELU become a few fused kernels.
    The whole forward, not each layer: transformers builds the attention mask outside the layers and builds
    it differently while a CUDA graph is being captured (it cannot read the mask's values then), so compiled
    layers would meet a new mask argument inside the capture, recompile there and break it. Traced whole, the
    mask is built the traced way every time."""
    encoders = text_encoders(pipe)
    for encoder in encoders:
        encoder.forward = torch.compile(encoder.forward, dynamic=False)
    return len(encoders)


def text_encoders(pipe: Any) -> list[torch.nn.Module]:
    """The pipeline's text encoders, set up as the pipelines use them: for their hidden states alone. A
    decoder-only encoder (Ovis' Qwen3) would otherwise build a KV cache each call, and that cache object in
    its output would also keep it out of a CUDA graph."""
    encoders = [getattr(pipe, n) for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
    for encoder in encoders:
        if getattr(getattr(encoder, "config", None), "use_cache", False):
            encoder.config.use_cache = False
    return encoders


def compile_vae(vae: torch.nn.Module) -> None:
    """Compile the VAE's decoder (its encoder is unused). NCHW, not channels_last: 38.0-38.7 against 42.7-43.4
    ms for a 1024px decode on an H100, A/B/A in one run (benchmarks/image_gpu_vae.py, session 7; session 6 had
    measured them level). Its group norms as looped reductions: inductor made them persistent (whole rows in
    registers), which took 43.6-44.4 ms on three of four H100s against 38.5-39.0 looped (sessions 7-8).
    Coordinate-descent tuning reached 33.4 ms, but its choices were not reused from the cache: a restart
    re-tuned for 22-43 s and missed the 60 s goal (65-82 s against 42 s). Graph breaks are tolerated: the
    decoder is not hot. Two rewrites took a decode from 38.6 to 27.0 ms (session 9, A/B/A in one process): the
    group norms reduce row by row, then combine the rows (services/image/group_norm.py; 30.3 ms alone), and the
    mid-block attention is two cuBLAS matmuls around a float32 softmax (services/image/vae_attention.py)."""
    from services.image import group_norm, vae_attention

    group_norm.install(vae.decoder)
    vae_attention.install(vae.decoder)
    vae.decoder.compile(dynamic=False, options={"triton.persistent_reductions": False})


def time_cuda(fn: Any, reps: int = 5, warmup: int = 1, calls: int = 1) -> float:
    """Median milliseconds of `fn` on the GPU: CUDA events around `calls` back-to-back calls, after `warmup`
    calls. More than one call hides the host's launch time, as inside a pipeline step: timed one call at a
    time, cuDNN's attention read 589 TFLOP/s at FLUX's shape, back to back 644 (session 4). Shared by the
    attention pick here and the GPU benchmarks."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def pick_attention(transformer: torch.nn.Module, tokens: int = 4608) -> str:
    """Time diffusers' attention dispatch per backend at the model's 1024px shape; keep the fastest that
    agrees with the default kernel. cuDNN's attention is often faster on Hopper than the flash kernel."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    heads = transformer.config.num_attention_heads
    dim = transformer.config.attention_head_dim
    dtype = next(transformer.parameters()).dtype
    q, k, v = (torch.randn(1, tokens, heads, dim, device="cuda", dtype=dtype) for _ in range(3))
    ref = dispatch_attention_fn(q, k, v, backend="native")
    best, best_ms = "native", float("inf")
    for name in ATTENTION_CANDIDATES:
        try:
            out = dispatch_attention_fn(q, k, v, backend=name)
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            if err > 2e-2:
                log.warning("attention %s disagrees with native (rel err %.3g); skipped", name, err)
                continue
            ms = time_cuda(lambda name=name: dispatch_attention_fn(q, k, v, backend=name), calls=5)
        except Exception as e:  # a backend this build lacks: keep the others
            log.info("attention %s unavailable: %s", name, e)
            continue
        log.info("attention %s: %.2f ms", name, ms)
        if ms < best_ms:
            best, best_ms = name, ms
    return best


def _set_attention(transformer: torch.nn.Module, opts: SpeedOptions, on_gpu: bool) -> str:
    """fp8 attention in the lossy fp8 mode when this GPU runs it, else the fastest PyTorch backend."""
    if opts.fp8 and (opts.fp8_attention is not False) and on_gpu:
        from services.image import attention_fp8

        why = attention_fp8.enable(transformer)
        if why is None:
            return "cudnn-fp8"
        log.warning("fp8 attention not used: %s", why)
    attention = opts.attention
    if attention == "auto":
        attention = pick_attention(transformer) if on_gpu else "native"
    if attention != "native":
        transformer.set_attention_backend(attention)
    return attention


def apply(pipe: Any, opts: SpeedOptions, device: str) -> Applied:
    t0 = time.perf_counter()
    done = Applied()
    transformer = pipe.transformer
    on_gpu = device.startswith("cuda")
    if opts.compile:
        configure_compile_cache(opts.cache_dir)
    if opts.fuse_qkv and fuse_qkv(transformer):
        done.steps.append("fuse_qkv")
    if opts.fp8:
        if not on_gpu:
            raise ValueError("fp8 needs a CUDA GPU (torchao float8 matmuls)")
        quantize_fp8(transformer, opts.fp8_impl)
        done.steps.append(f"fp8:{opts.fp8_impl}")
    if (on_gpu if opts.fuse_mlp is None else opts.fuse_mlp):
        from services.image import mlp

        if mlp.fuse(transformer):
            done.steps.append("fuse_mlp")
    done.attention = _set_attention(transformer, opts, on_gpu)
    if opts.compile and opts.long_row_reductions and on_gpu:
        from services.image import reductions

        reductions.install()
        done.steps.append("long_row_reductions")
    if opts.compile and on_gpu:
        from services.image import rope

        if rope.install():  # bit-for-bit diffusers' RoPE, cheaper once compiled
            done.steps.append("rope_flip")
    if opts.compile:
        _raise_recompile_limit()
        # Regional compilation: one graph for the repeated block class, reused by all 57 (FLUX) blocks;
        # seconds to compile instead of minutes for the whole model.
        transformer.compile_repeated_blocks(fullgraph=True, dynamic=False)
        done.steps.append("compile_blocks")
        if on_gpu and compile_text_encoders(pipe):
            done.steps.append("compile_text_encoders")
    if on_gpu and opts.cuda_graph_shapes > 0 and (opts.compile if opts.cuda_graph is None else opts.cuda_graph):
        from services.image import cuda_graphs

        cuda_graphs.install(transformer, opts.cuda_graph_shapes)
        for encoder in text_encoders(pipe):  # one prompt length each: one graph
            cuda_graphs.install(encoder, 2)
        done.steps.append("cuda_graph")
    if opts.modulation_table:
        from services.image import modulation

        if modulation.install(transformer) is not None:  # last: its forward wraps the CUDA graph's
            done.steps.append("modulation_table")
    if opts.compile if opts.compile_vae is None else opts.compile_vae:
        compile_vae(pipe.vae)
        done.steps.append("compile_vae")
    if opts.pin_devices:
        from services.image import placement

        if placement.pin(pipe):
            done.steps.append("pin_devices")
    done.seconds = time.perf_counter() - t0
    return done
