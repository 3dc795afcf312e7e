"""The torch side: tiny pipelines on the CPU through ImageEngine, CFG pairing, QKV fusion, fp8 numerics.

pytest runs in the gateway env, which has no torch: there this file re-runs itself under .venvs/image
(built by `services/setup-env.sh image`) and passes or fails with it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HAS_TORCH = importlib.util.find_spec("diffusers") is not None

if not HAS_TORCH:

    def test_in_image_env() -> None:
        py = Path(os.environ.get("PLATFORM_VENVS", ROOT / ".venvs")) / "image" / "bin" / "python"
        if not py.exists():
            pytest.skip("no .venvs/image: run services/setup-env.sh image")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        r = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings",
                            "-o", "addopts=", __file__], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=900)
        sys.stdout.write(r.stdout[-3000:])
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]

else:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from services.image import fp8
    from services.image.build import build_checkpoint
    from services.image.engine import ImageEngine
    from services.image.jobs import Job
    from services.image.speed import SpeedOptions

    @pytest.fixture(scope="module")
    def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
        root = tmp_path_factory.mktemp("models")
        for name in ("tiny-flux", "tiny-ovis"):
            build_checkpoint(name, root / name)
        return root

    def engine(models: Path, family: str, **kw) -> ImageEngine:
        opts = kw.pop("opts", SpeedOptions())
        return ImageEngine.load(models / f"tiny-{family}", family, "cpu", "float32", opts, **kw)

    def transformer_inputs(e: ImageEngine) -> dict:
        """The keyword arguments of the transformer's first forward in a one-step-image generation."""
        seen: dict = {}
        hook = e.pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.setdefault("kw", k) and None,
                                                            with_kwargs=True)
        e.generate([Job("a cat", 64, 64, 1, 3.5, seed=0)])  # guidance 3.5 on Ovis: CFG batched or not, any kw
        hook.remove()
        return seen["kw"]

    def pixels(img) -> np.ndarray:
        return np.asarray(img, dtype=np.int16)

    @pytest.mark.parametrize("family,guidance", [("flux", 3.5), ("ovis", 5.0)])
    def test_generate_sizes_seeds_batches(models: Path, family: str, guidance: float) -> None:
        e = engine(models, family, max_batch=2)
        r = e.generate([Job("a cat", 128, 64, 2, guidance, seed=3, n=2), Job("a dog", 128, 64, 2, guidance, seed=8)])
        assert [im.size for im in r[0].images] == [(128, 64), (128, 64)] and r[0].seeds == [3, 4]
        assert r[1].seeds == [8] and r[0].step_seconds > 0
        alone = e.generate([Job("a cat", 128, 64, 2, guidance, seed=3)])[0].images[0]
        # batched or alone, the same seed gives the same image (up to float rounding)
        assert np.abs(pixels(alone) - pixels(r[0].images[0])).max() <= 2

    def test_ovis_cfg_pairing_matches_two_passes(models: Path) -> None:
        e = engine(models, "ovis")
        job = Job("a cat", 64, 64, 3, 5.0, seed=1, negative_prompt="blurry")
        two = e.generate([job])[0].images[0]
        e.cfg_batch_max_pixels = 64 * 64
        calls = []
        fwd = e.pipe.transformer.forward  # services/image/modulation.py's, around the model's own forward
        inner = fwd.inner
        fwd.inner = lambda *a, **k: calls.append(k["hidden_states"].shape[0]) or inner(*a, **k)
        try:
            paired = e.generate([job])[0].images[0]
        finally:
            fwd.inner = inner
        assert calls == [2, 2, 2]  # one batch-2 forward per step instead of two batch-1 forwards
        assert np.abs(pixels(two) - pixels(paired)).max() <= 2
        assert not hasattr(e.pipe, "__dict__") or "encode_prompt" not in e.pipe.__dict__  # patch removed

    @pytest.mark.parametrize("family,pair", [("flux", False), ("ovis", False), ("ovis", True)])
    def test_modulation_tables_same_images(models: Path, family: str, pair: bool) -> None:
        """Every step's norm rows from one matmul per image (services/image/modulation.py): the images of the
        norms' own Linear layers, each forward served from the table (Ovis: CFG passes apart and paired)."""
        from services.image import modulation

        job = Job("a cat", 64, 64, 3, 4.0, seed=2, negative_prompt="blurry")
        plain = engine(models, family, opts=SpeedOptions(modulation_table=False))
        assert not hasattr(plain.pipe.transformer, "step_modulation")
        e = engine(models, family, cfg_batch_max_pixels=64 * 64 if pair else 0)
        assert "modulation_table" in e.applied.steps
        assert not any(isinstance(m, torch.nn.Linear) for m in e.pipe.transformer.norm_out.modules())
        served = []
        real = modulation.Schedule.select
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(modulation.Schedule, "select", lambda *a: served.append(real(*a)) or served[-1])
            img = e.generate([job])[0].images[0]
        forwards = 3 if family == "flux" or pair else 6
        assert served == [True] * forwards
        assert np.abs(pixels(plain.generate([job])[0].images[0]) - pixels(img)).max() <= 2
        # a forward outside any image computes its own rows: the norms' Linear layers' output
        kw = transformer_inputs(e)
        with torch.inference_mode():
            torch.testing.assert_close(e.pipe.transformer(**kw)[0], plain.pipe.transformer(**kw)[0],
                                       rtol=1e-4, atol=1e-4)

    def test_modulation_table_miss_remakes_the_image(models: Path, caplog: pytest.LogCaptureFixture) -> None:
        """A forward whose timestep is not in the table (here: a table built off by one) would read a wrong
        row: the engine notices after the image, turns the tables off and makes it again, the same image."""
        from services.image import modulation

        job = Job("a cat", 64, 64, 2, 3.5, seed=4)
        plain = engine(models, "flux", opts=SpeedOptions(modulation_table=False)).generate([job])[0].images[0]
        e = engine(models, "flux")
        real = modulation.Schedule._build

        def shifted(self, *a):
            real(self, *a)
            self.passed = self.passed + 1

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(modulation.Schedule, "_build", shifted)
            r = e.generate([job])[0]
        assert "modulation tables off" in caplog.text and not e.pipe.transformer.step_modulation.enabled
        assert np.abs(pixels(plain) - pixels(r.images[0])).max() <= 2 and r.step_seconds > 0
        with modulation.schedule(e.pipe) as tables:
            assert tables is None  # off from now on

    @pytest.mark.parametrize("family", ["flux", "ovis"])
    def test_fused_qkv_same_images(models: Path, family: str) -> None:
        job = Job("a cat", 64, 64, 2, 4.0, seed=2)
        plain = engine(models, family).generate([job])[0].images[0]
        e = engine(models, family, opts=SpeedOptions(fuse_qkv=True))
        assert "fuse_qkv" in e.applied.steps
        assert np.abs(pixels(plain) - pixels(e.generate([job])[0].images[0])).max() <= 2

    @pytest.mark.parametrize("family", ["flux", "ovis"])
    def test_pinned_devices_same_images_no_walks(models: Path, family: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """services/image/placement.py: with the device look-ups pinned at load, an image makes no walk over
        the modules (diffusers' offload probe is never called) and is the image made without the pin."""
        from diffusers.hooks import group_offloading

        job = Job("a cat", 64, 64, 2, 4.0, seed=2)
        plain = engine(models, family, opts=SpeedOptions(pin_devices=False))
        assert "pin_devices" not in plain.applied.steps and type(plain.pipe).__dict__.get("__pinned__") is None
        before = plain.generate([job])[0].images[0]
        e = engine(models, family)
        assert "pin_devices" in e.applied.steps and type(e.pipe).__name__ == type(plain.pipe).__name__

        def walk(module: torch.nn.Module) -> torch.device:
            raise AssertionError("a module walk during the image")

        monkeypatch.setattr(group_offloading, "_get_group_onload_device", walk)
        assert (pixels(e.generate([job])[0].images[0]) == pixels(before)).all()

    def test_pinned_devices_leave_offloaded_pipelines(models: Path) -> None:
        """A pipeline with an offloading hook keeps diffusers' look-ups: their answer follows the hook."""
        from services.image import placement

        e = engine(models, "flux", opts=SpeedOptions(pin_devices=False))
        cls = type(e.pipe)
        e.pipe.vae.decoder._hf_hook = type("Hook", (), {"execution_device": "cpu"})()
        assert not placement.pin(e.pipe) and type(e.pipe) is cls

    def test_fused_mlp_same_images(models: Path) -> None:
        """FLUX's MLP ends rewired (services/image/mlp.py; CPU fallbacks of its ops) give the same image."""
        job = Job("a cat", 64, 64, 2, 3.5, seed=5)
        plain = engine(models, "flux").generate([job])[0].images[0]
        e = engine(models, "flux", opts=SpeedOptions(fuse_qkv=True, fuse_mlp=True))
        assert "fuse_mlp" in e.applied.steps
        single = e.pipe.transformer.single_transformer_blocks[0]
        assert type(single).__name__ == "FluxSingleTransformerBlock" and not hasattr(single, "proj_out")
        assert np.abs(pixels(plain) - pixels(e.generate([job])[0].images[0])).max() <= 2

    @pytest.mark.parametrize("family", ["flux", "ovis"])
    def test_fused_mlp_fp8_same_output(models: Path, family: str) -> None:
        """fp8 blocks: the fused activation + per-row quantisation path equals fp8.py's unfused arithmetic."""
        from services.image import mlp

        e = engine(models, family)
        tr = e.pipe.transformer
        kw = transformer_inputs(e)
        fp8.quantize(tr, lambda m, name: isinstance(m, torch.nn.Linear) and "transformer_blocks" in name)
        with torch.inference_mode():
            try:
                ref = tr(**kw)[0]
            except RuntimeError as e:  # torch < 2.13 on the CPU: per-tensor scaled_mm only
                pytest.skip(f"row-wise _scaled_mm unavailable here: {e}")
            assert mlp.fuse(tr) == len(tr.transformer_blocks) + len(tr.single_transformer_blocks)
            assert mlp.fuse(tr) == 0  # idempotent
            out = tr(**kw)[0]
        torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent H100)")
    @pytest.mark.parametrize("family", ["flux", "ovis"])
    def test_fused_mlp_gpu(models: Path, family: str) -> None:
        """On a GPU: the Triton kernel and cuBLASLt epilogue paths, eager and compiled, match the unfused blocks."""
        import copy

        from services.image import mlp

        e = ImageEngine.load(models / f"tiny-{family}", family, "cuda", "bfloat16", SpeedOptions(fuse_mlp=False))
        tr = e.pipe.transformer
        kw = transformer_inputs(e)
        for quantized in (False, True):
            ref_model = copy.deepcopy(tr)
            if quantized:
                fp8.quantize(ref_model, lambda m, name: isinstance(m, torch.nn.Linear) and "transformer_blocks" in name)
            fused = copy.deepcopy(ref_model)
            assert mlp.fuse(fused) > 0 or (family == "ovis" and not quantized)
            with torch.inference_mode():
                ref = ref_model(**kw)[0].float()
                eager = fused(**kw)[0].float()
                fused.compile_repeated_blocks(fullgraph=True, dynamic=False)
                compiled = fused(**kw)[0].float()
            for out in (eager, compiled):
                assert ((out - ref).norm() / ref.norm()).item() < 2e-2, (family, quantized)

    def test_fused_mlp_ops() -> None:
        from services.image import mlp

        torch.manual_seed(0)
        attn, h, hb = torch.randn(6, 16), torch.randn(6, 48), torch.randn(48)
        torch.library.opcheck(mlp.act_quant_rows, (attn, h, hb, False))
        torch.library.opcheck(mlp.act_quant_rows, (None, h, None, False))
        torch.library.opcheck(mlp.act_quant_rows, (attn, h, hb, True))
        # e4m3 attention input: fake-tensor contract only (float8 outputs cannot be compared by opcheck)
        torch.library.opcheck(mlp.act_quant_rows, (attn.to(fp8.E4M3), h, hb, False, torch.tensor([0.5])),
                              test_utils="test_faketensor")
        q, s = mlp.act_quant_rows(attn, h, hb, False)
        ref = torch.cat([attn, torch.nn.functional.gelu(h + hb, approximate="tanh")], dim=-1)
        assert q.dtype == fp8.E4M3 and s.shape == (6, 1)
        assert ((q.float() * s - ref).abs() <= ref.abs() * 0.07 + 1e-6).all()  # e4m3: 3 mantissa bits
        lin = torch.nn.Linear(64, 8)
        split = mlp.SplitOut(lin, 16)
        torch.library.opcheck(mlp.split_out, (attn, h, split.weight_attn.detach(), split.weight_mlp.detach(),
                                              lin.bias.detach()))
        torch.testing.assert_close(split(attn, h), lin(torch.cat([attn, h], dim=-1)), rtol=1e-5, atol=1e-5)

    def test_fp8_attention_arithmetic() -> None:
        """The fp8 attention's quantisation (static Q/K scale from the norm bound, per-tensor V scale, e4m3
        output scaled by V's) stays close to exact attention; the op keeps its contract (opcheck)."""
        from diffusers.models.normalization import RMSNorm

        from services.image import attention_fp8 as af

        torch.manual_seed(0)
        d = 128
        norm = RMSNorm(d, eps=1e-6)
        norm.weight.data = torch.rand(d) * 3
        norm.requires_grad_(False)
        q, k = (norm(torch.randn(2, 300, 4, d) * 5) for _ in range(2))
        v = torch.randn(2, 300, 4, d) * 3
        bound = d**0.5 * float(norm.weight.abs().max())
        assert float(max(q.abs().max(), k.abs().max())) <= bound
        exact = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)))
        lossy = af.reference(q, k, v, bound / af.E4M3_MAX)
        assert lossy.shape == q.shape and lossy.dtype == q.dtype
        err = ((lossy - exact.transpose(1, 2)).norm() / exact.norm()).item()
        assert 0 < err < 0.15, err  # e4m3 keeps 3 mantissa bits
        q8, k8 = (af.quantize_qk(x, bound / af.E4M3_MAX) for x in (q, k))
        v8, v_descale = af.quantize_v(v)
        assert q8.dtype == v8.dtype == af.E4M3 and v_descale.shape == (1,)
        o8 = af.sdpa_fp8(q8, k8, v8, bound / af.E4M3_MAX, v_descale, 1 / v_descale, d**-0.5)
        assert o8.dtype == af.E4M3 and o8.shape == q.shape and o8.float().abs().max() <= af.E4M3_MAX
        # fake-tensor contract only: opcheck's other checks compare outputs, which float8 tensors cannot
        torch.library.opcheck(af.sdpa_fp8, (q8, k8, v8, bound / af.E4M3_MAX, v_descale, 1 / v_descale, d**-0.5),
                              test_utils="test_faketensor")

    @pytest.mark.parametrize("family", ["flux", "ovis"])
    def test_fp8_attention_routes_every_attention(models: Path, family: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        """install() sends every processor's attention through the fp8 path (here the op's CPU contract)
        and nothing else changes; qk_bound finds every Q/K norm and really bounds Q and K."""
        from services.image import attention_fp8 as af

        e = engine(models, family)
        tr = e.pipe.transformer
        kw = transformer_inputs(e)
        calls: list[float] = []
        attention = af.attention

        def counted(query, key, value, qk_descale, kernel=None):
            calls.append(float(max(query.abs().max(), key.abs().max())) / (qk_descale * af.E4M3_MAX))
            return attention(query, key, value, qk_descale, kernel)

        monkeypatch.setattr(af, "attention", counted)
        bound = af.qk_bound(tr)
        assert bound is not None and bound > 0
        with torch.inference_mode():
            ref = tr(**kw)[0]
            routed = af.install(tr, af.Backend(bound / af.E4M3_MAX))
            assert routed == len(tr.transformer_blocks) + len(tr.single_transformer_blocks)
            lossy = tr(**kw)[0]
            tr.set_attention_backend("native")  # back to diffusers' dispatch: exact again
            again = tr(**kw)[0]
        assert len(calls) == routed and max(calls) <= 1.0  # every Q and K within the static bound
        assert ((lossy - ref).norm() / ref.norm()).item() < 0.15
        torch.testing.assert_close(again, ref)
        if not torch.cuda.is_available():
            assert af.enable(tr) is not None  # no GPU: the speed path keeps PyTorch's attention

    def fp8_routed(models: Path, family: str, quantize: bool = False, device: str = "cpu"):
        """A tiny transformer with fused QKV and its attention routed to the fp8 path, and its inputs."""
        from services.image import attention_fp8 as af

        e = ImageEngine.load(models / f"tiny-{family}", family, device,
                             "float32" if device == "cpu" else "bfloat16", SpeedOptions(fuse_qkv=True, fuse_mlp=False))
        tr = e.pipe.transformer
        kw = transformer_inputs(e)
        if quantize:
            fp8.quantize(tr, lambda m, name: isinstance(m, torch.nn.Linear) and "transformer_blocks" in name)
        af.install(tr, af.Backend(af.qk_bound(tr) / af.E4M3_MAX))
        return tr, kw

    @pytest.mark.parametrize("family", ["flux", "ovis"])
    def test_fp8_single_stream_is_the_processor(models: Path, family: str) -> None:
        """attention_fp8.single_stream computes what the block's routed processor computes, stopping before the
        dequantisation; other attentions are left to their processors."""
        from services.image import attention_fp8 as af

        tr, kw = fp8_routed(models, family)
        block = tr.single_transformer_blocks[0]
        seen = {}
        hook = block.attn.register_forward_pre_hook(lambda m, a, k: seen.setdefault("kw", k) and None,
                                                    with_kwargs=True)
        with torch.inference_mode():
            tr(**kw)
            hook.remove()
            x, rot = seen["kw"]["hidden_states"], seen["kw"]["image_rotary_emb"]
            o8, descale = af.single_stream(block.attn, x, rot)
            assert o8.dtype == af.E4M3 and o8.shape == x.shape
            assert torch.equal(af.dequantize(o8, descale, x.dtype), block.attn(hidden_states=x, image_rotary_emb=rot))
            assert af.single_stream(tr.transformer_blocks[0].attn, x, rot) is None  # two streams
            tr.set_attention_backend("native")
            assert af.single_stream(block.attn, x, rot) is None  # not routed to fp8

    @pytest.mark.parametrize("family", ["flux", "ovis"])
    def test_fp8_single_blocks_take_the_e4m3_output(models: Path, family: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        """fp8 single blocks hand the attention's e4m3 output to the MLP quantisation as it is: the transformer's
        output equals the path that dequantises first."""
        from services.image import attention_fp8 as af
        from services.image import mlp

        tr, kw = fp8_routed(models, family, quantize=True)
        assert mlp.fuse(tr) > 0
        calls = []
        single_stream = af.single_stream
        monkeypatch.setattr(af, "single_stream", lambda *a: calls.append(1) or single_stream(*a))
        with torch.inference_mode():
            try:
                fused = tr(**kw)[0]
            except RuntimeError as e:  # torch < 2.13 on the CPU: per-tensor scaled_mm only
                pytest.skip(f"row-wise _scaled_mm unavailable here: {e}")
            assert len(calls) == len(tr.single_transformer_blocks)
            monkeypatch.setattr(af, "single_stream", lambda *a: None)
            torch.testing.assert_close(fused, tr(**kw)[0], rtol=0, atol=0)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent H100)")
    @pytest.mark.parametrize("family", ["flux", "ovis"])
    def test_fp8_single_blocks_e4m3_gpu(models: Path, family: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """On a GPU, eager and compiled: the Triton kernel's e4m3 input gives the bytes of the dequantise-first
        path, and whole transformers agree."""
        from services.image import attention_fp8 as af
        from services.image import mlp, triton_kernels

        torch.manual_seed(0)
        o8 = (torch.randn(64, 96, device="cuda") * 50).to(af.E4M3)
        descale = torch.tensor([0.037], device="cuda")
        h, hb = torch.randn(64, 384, device="cuda", dtype=torch.bfloat16), torch.randn(384, device="cuda",
                                                                                        dtype=torch.bfloat16)
        for swiglu in (False, True):
            q1, s1 = triton_kernels.quantize(o8, h, hb, swiglu, attn_scale=descale)
            q2, s2 = triton_kernels.quantize(af.dequantize(o8, descale, torch.bfloat16), h, hb, swiglu)
            assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s1, s2)
        tr, kw = fp8_routed(models, family, quantize=True, device="cuda")
        assert mlp.fuse(tr) > 0
        with torch.inference_mode():
            e4m3 = tr(**kw)[0].float()
            single_stream = af.single_stream
            monkeypatch.setattr(af, "single_stream", lambda *a: None)
            ref = tr(**kw)[0].float()
            monkeypatch.setattr(af, "single_stream", single_stream)
            tr.compile_repeated_blocks(fullgraph=True, dynamic=False)
            compiled = tr(**kw)[0].float()
        for out in (e4m3, compiled):
            assert ((out - ref).norm() / ref.norm()).item() < 2e-2

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent H100)")
    def test_fp8_attention_gpu() -> None:
        """cuDNN's fp8 kernel against the op's PyTorch contract, eager and inside a compiled function, with
        Q, K, V as strided views of a fused QKV output; 1000 tokens as well as multiples of 128."""
        from services.image import attention_fp8 as af

        if (why := af.available()) is not None:
            pytest.skip(why)
        torch.manual_seed(0)
        for b, s, h in ((1, 4608, 24), (2, 1024, 3), (1, 1000, 3)):
            d = 128
            qkv = torch.randn(b, s, 3 * h * d, device="cuda", dtype=torch.bfloat16)
            q, k, v = (x.unflatten(-1, (h, d)) for x in qkv.chunk(3, dim=-1))
            q, k = (torch.nn.functional.rms_norm(x, (d,), eps=1e-6) for x in (q, k))
            qk_descale = d**0.5 / af.E4M3_MAX
            ref = af.reference(q, k, v, qk_descale).float()
            exact = torch.nn.functional.scaled_dot_product_attention(
                *(x.float().transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
            compiled = torch.compile(lambda q, k, v, c=qk_descale: af.attention(q, k, v, c), fullgraph=True)
            for out in (af.attention(q, k, v, qk_descale), compiled(q, k, v)):
                assert out.shape == (b, s, h, d) and out.dtype == torch.bfloat16
                # the kernel also rounds the softmax weights to e4m3; the reference does not
                assert ((out.float() - ref).norm() / ref.norm()).item() < 0.08, (b, s, h)
                assert ((out.float() - exact).norm() / exact.norm()).item() < 0.1, (b, s, h)

    def test_cuda_graph_wrapper_passthrough() -> None:
        """What a graph is specialised on, and everything that must run the plain forward (CPU tensors, grad
        mode, positional or non-tensor arguments): same result as the module's own forward."""
        from services.image import cuda_graphs

        sig = cuda_graphs._signature
        lin = torch.nn.Linear(4, 4)
        graphed = cuda_graphs.install(lin)
        x = torch.randn(2, 4)
        with torch.inference_mode():
            torch.testing.assert_close(lin(input=x), torch.nn.functional.linear(x, lin.weight, lin.bias))
        assert sig({"a": x}) is None and sig({"d": {"mask": x}}) is None  # CPU tensors, tensors in dicts
        assert sig({"flag": False, "n": None, "kw": {}}) == (("flag", False), ("kw", ()), ("n", None))
        assert sig({"kw": {"scale": 1.0}}) == (("kw", (("scale", 1.0),)),)
        assert not graphed.graphs and not graphed.replays and graphed.max_graphs == 4
        assert cuda_graphs.install(torch.nn.Linear(2, 2), max_graphs=1).max_graphs == 1
        assert graphed._by_name((x,), {}) == {"input": x}  # a text encoder's token ids come first
        assert cuda_graphs.GraphedForward(lambda *a, **kw: a)._by_name((x,), {}) is None
        kw_only = cuda_graphs.GraphedForward(lambda input_ids=None, **kw: input_ids)  # transformers' forwards
        assert kw_only._by_name((x,), {"output_hidden_states": False}) == {"input_ids": x,
                                                                          "output_hidden_states": False}
        del lin.forward  # the class's forward again
        assert lin.forward.__func__ is torch.nn.Linear.forward

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent H100)")
    @pytest.mark.parametrize("family", ["flux", "ovis"])
    def test_cuda_graph_gpu(models: Path, family: str) -> None:
        """The transformer replayed as a CUDA graph gives the images the plain forward gives (Ovis with its
        CFG pairing wrapped around the graph), and does replay."""
        from services.image import cuda_graphs

        e = ImageEngine.load(models / f"tiny-{family}", family, "cuda", "bfloat16", SpeedOptions(),
                             cfg_batch_max_pixels=64 * 64)
        job = Job("a cat", 64, 64, 4, 5.0 if family == "ovis" else 3.5, seed=1)
        plain = e.generate([job])[0].images[0]
        graphed = cuda_graphs.install(e.pipe.transformer)
        encoders = [cuda_graphs.install(enc) for enc in (e.pipe.text_encoder, getattr(e.pipe, "text_encoder_2", None))
                    if enc is not None]
        for _ in range(3):  # the text encoders run once an image: eager, captured, replayed
            out = e.generate([job])[0].images[0]
            assert np.abs(pixels(out) - pixels(plain)).max() <= 1
        assert graphed.replays >= 2 and len(graphed.graphs) == 1
        assert e.pipe.transformer.forward is graphed  # CFG pairing put it back
        for enc in encoders:  # replayed, or refused at capture (a host sync in its code) and run eagerly
            assert enc.replays >= 1 or enc.refused, enc.forward

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent H100)")
    @pytest.mark.parametrize("family", ["flux", "ovis"])
    def test_modulation_tables_gpu(models: Path, family: str) -> None:
        """The service's GPU path (compiled blocks, CUDA graph, tables around it) gives the images of the
        norms' own Linear layers; its forwards are served from the tables and the graph replays."""
        job = Job("a cat", 64, 64, 4, 5.0 if family == "ovis" else 3.5, seed=1, negative_prompt="blurry")
        images = {}
        for tables in (False, True):
            e = ImageEngine.load(models / f"tiny-{family}", family, "cuda", "bfloat16",
                                 SpeedOptions(compile=True, modulation_table=tables), cfg_batch_max_pixels=64 * 64)
            assert ("modulation_table" in e.applied.steps) == tables
            images[tables] = [e.generate([job])[0].images[0] for _ in range(3)]  # compile, capture, replay
        for on, off in zip(images[True], images[False], strict=True):
            assert np.abs(pixels(on) - pixels(off)).max() <= 2
        fwd = e.pipe.transformer.forward
        assert fwd.inner.replays >= 4 and e.pipe.transformer.step_modulation.enabled

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent H100)")
    def test_cuda_graph_refusal_gpu() -> None:
        """A forward that cannot be captured (a host sync) stays eager, gives its normal result, and the
        aborted capture leaves the CUDA RNG usable."""
        from services.image import cuda_graphs

        def forward(x: torch.Tensor) -> torch.Tensor:
            return x * float(x.sum().item() > 0) + torch.rand_like(x) * 0

        graphed = cuda_graphs.GraphedForward(forward)
        x = torch.ones(4, device="cuda")
        with torch.inference_mode():
            for _ in range(3):
                assert torch.equal(graphed(x), x)
        assert graphed.refused and not graphed.graphs
        torch.randn(2, device="cuda")

    def test_rope_flip_is_diffusers_rope() -> None:
        """services/image/rope.py computes diffusers' interleaved RoPE bit for bit, both sequence layouts,
        and hands every other variant to diffusers."""
        from diffusers.models.embeddings import apply_rotary_emb

        from services.image import rope

        torch.manual_seed(0)
        cos, sin = torch.randn(50, 128), torch.randn(50, 128)
        for x, seq_dim in ((torch.randn(2, 50, 3, 128, dtype=torch.bfloat16), 1),
                           (torch.randn(2, 3, 50, 128, dtype=torch.bfloat16), 2)):
            ours = rope.apply_rotary_emb(x, (cos, sin), sequence_dim=seq_dim, original=apply_rotary_emb)
            assert torch.equal(ours, apply_rotary_emb(x, (cos, sin), sequence_dim=seq_dim))
        x = torch.randn(2, 3, 50, 128)
        half = rope.apply_rotary_emb(x, (cos, sin), use_real_unbind_dim=-2, original=apply_rotary_emb)
        assert torch.equal(half, apply_rotary_emb(x, (cos, sin), use_real_unbind_dim=-2))
        assert rope.install() == 2 and rope.install() == 2  # FLUX and Ovis modules; idempotent

    def test_vae_tiling_toggles(models: Path) -> None:
        e = engine(models, "flux", vae_tiling_above=96)
        e.generate([Job("a cat", 128, 128, 1, 3.5, seed=0)])
        assert e.pipe.vae.use_tiling
        e.generate([Job("a cat", 64, 64, 1, 3.5, seed=0)])
        assert not e.pipe.vae.use_tiling

    @pytest.mark.parametrize("family", ["flux", "ovis"])
    def test_built_pipelines_are_in_eval_mode(family: str) -> None:
        """As from_pretrained leaves them: T5's dropout must not run in a benchmark."""
        from services.image.tiny_pipelines import build

        modules = [m for m in build(family).components.values() if isinstance(m, torch.nn.Module)]
        assert modules and not any(m.training for top in modules for m in top.modules())

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent H100)")
    @pytest.mark.parametrize("family", ["flux", "ovis"])
    def test_compiled_text_encoders_gpu(models: Path, family: str) -> None:
        """Text encoders compiled and graphed give the eager prompt embeddings, and replay (Ovis too: no KV cache)."""
        from services.image import cuda_graphs
        from services.image.speed import compile_text_encoders, text_encoders

        e = ImageEngine.load(models / f"tiny-{family}", family, "cuda", "bfloat16", SpeedOptions())
        prompt = ["a cat on a mat"]

        def encode():
            with torch.inference_mode():
                out = e.pipe.encode_prompt(prompt, prompt, device="cuda") if family == "flux" else \
                    e.pipe.encode_prompt(prompt, device="cuda")
            return [t.float() for t in out if isinstance(t, torch.Tensor)]

        plain = encode()
        assert compile_text_encoders(e.pipe) == (2 if family == "flux" else 1)
        graphs = [cuda_graphs.install(enc, 2) for enc in text_encoders(e.pipe)]  # around the compiled forward
        for _ in range(3):  # compile, capture, replay
            for a, b in zip(encode(), plain, strict=True):
                torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
        assert all(g.replays >= 1 and not g.refused for g in graphs), [(g.replays, g.refused) for g in graphs]
        torch.randn(2, device="cuda")  # the CUDA RNG is usable afterwards

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent H100)")
    def test_compiled_vae_gpu() -> None:
        """The decoder compiled as the service compiles it (group norms as looped reductions) is no further from
        a float32 decode than the eager bf16 decoder is: the full-size FLUX/Ovis VAE, random weights, a 512px
        image. (Compiled and eager bf16 differ from each other by ~3 %: eager rounds to bf16 between ops, the
        compiled kernels keep float32 inside a fused kernel.)"""
        import copy

        from services.image.speed import compile_vae
        from services.image.tiny_pipelines import _build_on, _vae

        with _build_on("cuda", torch.bfloat16):
            vae = _vae("full").eval()
        z = torch.randn(1, 16, 64, 64, device="cuda", dtype=torch.bfloat16,
                        generator=torch.Generator("cuda").manual_seed(0))

        def decode(model: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model.decode(latents, return_dict=False)[0].float()

        def pixels_of(x: torch.Tensor) -> torch.Tensor:  # the engine's uint8 conversion
            return ((x / 2 + 0.5).clamp(0, 1) * 255).round()

        def errors(x: torch.Tensor) -> tuple[float, float]:
            return (((x - ref).norm() / ref.norm()).item(), (pixels_of(x) - pixels_of(ref)).abs().mean().item())

        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # a float32 reference: no TF32 convolutions
        try:
            ref = decode(copy.deepcopy(vae).float(), z.float())
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        eager = errors(decode(vae, z))
        compile_vae(vae)
        for _ in range(2):  # compiles, then runs the compiled kernels
            compiled = errors(decode(vae, z))
            print(f"against float32: eager bf16 rel {eager[0]:.2e}, pixels {eager[1]:.3f}; "
                  f"compiled rel {compiled[0]:.2e}, pixels {compiled[1]:.3f}")
            assert compiled[0] <= 1.25 * eager[0] and compiled[1] <= 1.25 * eager[1] + 0.05

    @pytest.mark.parametrize("shape,groups,channels_last", [
        ((1, 128, 24, 40), 32, False), ((1, 128, 24, 40), 32, True), ((2, 64, 7, 5), 8, True),
        ((1, 512, 96), 32, False), ((3, 32), 4, False)])
    def test_two_stage_group_norm(shape: tuple, groups: int, channels_last: bool) -> None:
        """services/image/group_norm.py is F.group_norm (float64 reference), in either layout, and keeps the
        input's layout; bf16 differs from ATen's bf16 by output rounding only."""
        from services.image.group_norm import group_norm

        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g) * 3 + 5  # an offset mean: the variance must not cancel
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        w, b = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
        ref = F.group_norm(x.double(), groups, w.double(), b.double(), 1e-6)
        out = group_norm(x, groups, w, b, 1e-6)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
        assert out.stride() == F.group_norm(x, groups, w, b, 1e-6).stride()
        torch.testing.assert_close(group_norm(x, groups, None, None, 1e-6), F.group_norm(x, groups, eps=1e-6),
                                   atol=1e-5, rtol=1e-5)
        xb = x.bfloat16()
        torch.testing.assert_close(group_norm(xb, groups, w.bfloat16(), b.bfloat16(), 1e-6).float(),
                                   F.group_norm(xb, groups, w.bfloat16(), b.bfloat16(), 1e-6).float(),
                                   atol=0.07, rtol=1e-2)

    def test_vae_attention_chunks() -> None:
        """services/image/vae_attention.py: the same attention as SDPA, whether the queries go in one chunk or
        several."""
        from services.image.vae_attention import attention

        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, 50, 16, generator=g) for _ in range(3))
        ref = F.scaled_dot_product_attention(q, k, v)
        for max_scores in (1 << 28, 50 * 7, 1):
            torch.testing.assert_close(attention(q, k, v, 16 ** -0.5, max_scores), ref, atol=1e-5, rtol=1e-5)

    def test_vae_decoder_rewrites_same_image() -> None:
        """The compiled decoder's two rewrites (two-stage group norms, mid-block attention as matmuls) decode
        what diffusers' modules decode (float32, the tiny VAE, eager), and can be taken out again."""
        from services.image import group_norm, vae_attention
        from services.image.tiny_pipelines import _vae

        torch.manual_seed(0)
        vae = _vae("tiny").eval()
        z = torch.randn(1, 16, 12, 10)
        with torch.inference_mode():
            plain = vae.decode(z, return_dict=False)[0]
            assert group_norm.install(vae.decoder) > 0 and vae_attention.install(vae.decoder) == 1
            rewritten = vae.decode(z, return_dict=False)[0]
            group_norm.uninstall(vae.decoder)
            vae_attention.uninstall(vae.decoder)
            again = vae.decode(z, return_dict=False)[0]
        torch.testing.assert_close(rewritten, plain, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(again, plain, atol=0, rtol=0)

    @pytest.mark.parametrize("family", ["flux", "ovis"])
    def test_initial_latents_are_the_pipelines(models: Path, family: str) -> None:
        """The engine's noise is what the pipeline's prepare_latents draws from one CPU generator per image,
        bit for bit, in bf16 too (drawn there in float32 and rounded: 8x faster on the CPU)."""
        from services.image.engine import initial_latents

        pipe = engine(models, family).pipe
        for dtype in (torch.float32, torch.bfloat16):
            pipe.transformer.to(dtype)
            ours = initial_latents(pipe, 96, 64, [5, 9], "cpu")
            theirs, _ = pipe.prepare_latents(2, pipe.transformer.config.in_channels // 4, 96, 64, dtype, "cpu",
                                             [torch.Generator("cpu").manual_seed(s) for s in (5, 9)])
            assert ours.dtype == dtype and torch.equal(ours, theirs)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent H100)")
    def test_initial_latents_gpu(models: Path) -> None:
        """On a GPU the noise goes through a page-locked buffer and a copy that does not wait: the same values
        as the CPU's, also when the buffer is reused for the next image while the GPU is busy."""
        from services.image.engine import initial_latents

        pipe = engine(models, "flux").pipe
        busy = torch.randn(4096, 4096, device="cuda")
        for seeds in ([5], [5, 9], [9]):
            for _ in range(20):
                busy = busy @ busy / 64  # keep the stream busy so that the copies queue behind it
            ours = initial_latents(pipe, 96, 64, seeds, "cuda", torch.bfloat16)
            assert torch.equal(ours.cpu(), initial_latents(pipe, 96, 64, seeds, "cpu", torch.bfloat16))

    def test_to_pil_is_diffusers_pil() -> None:
        """The engine's PIL conversion gives diffusers' "pil" output byte for byte (bf16 and float32 decodes,
        values beyond [-1, 1] and exactly on the x.5 rounding ties)."""
        from diffusers.image_processor import VaeImageProcessor

        from services.image.engine import to_pil

        proc = VaeImageProcessor()
        torch.manual_seed(0)
        ties = (torch.arange(256.0) + 0.5) / 255 * 2 - 1  # 255 x (x/2 + 1/2) lands on k + 0.5
        for dtype in (torch.bfloat16, torch.float32):
            decoded = (torch.randn(2, 3, 48, 32) * 1.2).to(dtype)
            decoded[0, 0, 0, :] = ties[:32].to(dtype)
            ours = to_pil(proc.postprocess(decoded, output_type="pt"))
            theirs = proc.postprocess(decoded, output_type="pil")
            assert [np.asarray(im).tobytes() for im in ours] == [np.asarray(im).tobytes() for im in theirs]
            assert ours[0].mode == theirs[0].mode == "RGB"

    def test_fp8_linear_close_to_bf16() -> None:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
        x = torch.randn(4, 16, 256)
        ref = model(x)
        assert fp8.quantize(model, lambda m, name: isinstance(m, torch.nn.Linear)) == 2
        assert isinstance(model[0], fp8.Fp8Linear)
        try:
            out = model(x)
        except RuntimeError as e:  # a CPU build without float8 matmuls
            pytest.skip(f"_scaled_mm unavailable here: {e}")
        assert ((out - ref).norm() / ref.norm()).item() < 0.1

    def test_long_row_reductions_choice() -> None:
        from types import SimpleNamespace

        from torch._inductor.runtime.hints import ReductionHint

        from services.image.reductions import LongRowReductions

        def features(numel: object, hint: ReductionHint = ReductionHint.INNER) -> SimpleNamespace:
            return SimpleNamespace(reduction_numel=numel, get_reduction_hint=lambda: hint)

        choices = LongRowReductions()
        assert choices.should_use_persistent_reduction(features(3072), False)  # layer norm rows: one pass
        assert not choices.long_inner_row(features(15360), False)  # measured slower in one pass: inductor decides
        assert not choices.long_inner_row(features(3072), True)  # cooperative: inductor decides
        assert not choices.long_inner_row(features(3072, ReductionHint.OUTER), False)
        assert LongRowReductions(16384).long_inner_row(features(15360), False)
