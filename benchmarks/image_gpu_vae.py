"""The VAE decode of a 1024px FLUX / Ovis image (the same 16-channel VAE), in the ways it could be compiled:
which one the service should use. Only the VAE is built (random weights), so this runs in a minute.

    python benchmarks/image_gpu_vae.py
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # image_gpu_other's timing helper

import torch
from image_gpu_other import kernels, ms

from services.image import group_norm, reductions, vae_attention
from services.image.speed import compile_vae
from services.image.tiny_pipelines import _build_on, _vae


def main() -> None:
    with _build_on("cuda", torch.bfloat16):
        vae = _vae("full").eval()
    latents = torch.randn(1, 16, 128, 128, device="cuda", dtype=torch.bfloat16)
    decode = lambda: vae.decode(latents, return_dict=False)[0]  # noqa: E731
    cases = [  # name, channels_last, compile, long-row reduction handler, grad context
        ("eager", True, False, False, torch.inference_mode),
        ("compiled, channels_last, long-row reductions (before session 7)", True, True, True, torch.inference_mode),
        ("compiled, NCHW, long-row reductions (the service in session 7)", False, True, True, torch.inference_mode),
        ("compiled, channels_last", True, True, False, torch.inference_mode),
        ("compiled, NCHW", False, True, False, torch.inference_mode),
        ("compiled, channels_last, long-row reductions, again", True, True, True, torch.inference_mode),
        ("compiled, NCHW, long-row reductions, again", False, True, True, torch.inference_mode),
    ]
    service = ("compiled, NCHW, no persistent reductions, two-stage group norms (the service)", False, True, True,
               "service")
    cases.insert(3, service)
    if os.environ.get("VAE_TUNE"):  # inductor's reduction tuning, NCHW
        cases = [cases[2], ("compiled, NCHW, coordinate-descent tuning", False, True, True, "cdt"), service, cases[2]]
    if os.environ.get("VAE_CHECK"):  # the service's against eager and the session 7 variant, no tuning
        cases = [cases[0], service, cases[2], service]
    looped = ("compiled, NCHW, no persistent reductions, ATen group norm (the service in session 8)", False, True, True,
              "looped")
    if os.environ.get("VAE_GN"):  # the two-stage group norms (session 9), against session 8's service
        cases = [looped, service, ("compiled, NCHW, two-stage group norms, SDPA attention", False, True, True, "gn2"),
                 service, looped]
    if os.environ.get("VAE_LAYOUT"):  # measured in session 9: all four within 0.7 ms (29.9-30.6)
        cases = [("compiled, NCHW, two-stage group norms, no layout optimisation", False, True, True, "gn2-nolo"),
                 ("compiled, channels_last, two-stage group norms", True, True, True, "gn2"),
                 ("compiled, channels_last, two-stage group norms, no layout optimisation", True, True, True,
                  "gn2-nolo")]
    if os.environ.get("VAE_SERVICE"):  # the service's decode alone (with VAE_KERNELS: where its time goes)
        cases = [service]
    if os.environ.get("VAE_MORE"):  # measured in session 7, all slower
        cases += [
            ("compiled, channels_last, GroupNorm eager (ATen)", True, True, True, "eager_gn"),
            ("compiled, NCHW, GroupNorm eager (ATen)", False, True, True, "eager_gn"),
            ("compiled, channels_last, cooperative reductions", True, True, True, "coop"),
            ("compiled, NCHW, cooperative reductions", False, True, True, "coop"),
        ]
    if os.environ.get("VAE_GN"):
        layouts(vae, decode)
    ref = None
    print("| VAE decode, 1024px, bf16 | ms |\n|---|---|")
    norms = [m for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)]
    for name, channels_last, compiled, long_rows, grad in cases:
        torch._dynamo.reset()
        from torch._inductor import config as ic

        ic.triton.cooperative_reductions = grad == "coop"
        ic.coordinate_descent_tuning = grad == "cdt"
        ic.triton.persistent_reductions = True
        vae_attention.uninstall(vae.decoder)
        group_norm.uninstall(vae)
        for m in norms if grad == "eager_gn" else ():  # ATen's GroupNorm kernel, the rest compiled around it
            m.forward = torch.compiler.disable(torch.nn.GroupNorm.forward.__get__(m))
        variant, grad = grad, torch.inference_mode if isinstance(grad, str) else grad
        from torch._inductor.choices import InductorChoices
        from torch._inductor.virtualized import V

        if long_rows:
            reductions.install()
        else:
            V.set_choices_handler(InductorChoices())
        vae.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        vae.decoder._compiled_call_impl = None
        if variant == "service":  # exactly what the service runs (speed.compile_vae)
            compile_vae(vae)
        elif variant == "looped":
            vae.decoder.compile(dynamic=False, options={"triton.persistent_reductions": False})
        elif variant.startswith("gn2"):  # services/image/group_norm.py, in the layout the VAE has
            group_norm.install(vae.decoder)
            vae.decoder.compile(dynamic=False, options={"triton.persistent_reductions": False,
                                                        "layout_optimization": not variant.endswith("nolo")})
        elif compiled:
            vae.decoder.compile(dynamic=False)
        with grad() if grad is not None else contextlib.nullcontext():
            t = ms(decode, reps=7)
            out = decode().float()
        ref = out if ref is None else ref
        err = ((out - ref).norm() / ref.norm()).item()
        print(f"| {name} | {t:.1f} (rel. diff to eager {err:.1e}) |")
        if os.environ.get("VAE_KERNELS"):
            with grad():
                kernels(name, decode, top=int(os.environ["VAE_KERNELS"]))


def layouts(vae: torch.nn.Module, decode) -> None:
    """The layout each group norm's input has in an eager NCHW decode (what dynamo traces the rewrite with)."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(
        "NCHW" if a[0].is_contiguous() else "channels_last" if a[0].is_contiguous(memory_format=torch.channels_last)
        else f"other {tuple(a[0].stride())}"))
        for m in vae.decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    with torch.inference_mode():
        decode()
    for h in hooks:
        h.remove()
    print("group-norm input layouts (eager decode):", {k: seen.count(k) for k in dict.fromkeys(seen)})


if __name__ == "__main__":
    main()
