"""Stand-in ONNX models with the real file names and tensor signatures of the MT Photos models
(Chinese-CLIP ViT-B/16 image/text towers, insightface buffalo_l det_10g + w600k_r50), built offline
with onnx.helper and seeded random weights. Real weights cannot be downloaded here.

Two sizes:
- tiny (tests, a few MB): the cheapest graphs with the right I/O;
- full (benchmark): the real architectures' shapes so timings are real compute: ViT-B/16 (12 x 768,
  patch 16), a RoBERTa-base-sized text encoder (12 x 768, vocab 21128, 52 tokens), an SCRFD-style
  detector of about 10 GFLOPs at 640x640, and an IResNet-50 ArcFace (~6 GFLOPs, 43M parameters).

Both detectors share one rule so results are deterministic: saturated red regions are "faces"
(score = sigmoid(4(R-G-B) - 8) on the normalised input, stride 32 only), boxes are 4 cells wide,
keypoints a fixed layout; the full detector adds its backbone's output at 1e-3 scale (compute, not
results). The recognisers are content-sensitive, so different squares give different embeddings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB_SIZE = 21128
OPSET = 17
DET_NAMES = {8: ("448", "451", "454"), 16: ("471", "474", "477"), 32: ("494", "497", "500")}
KPS = np.array([-0.45, -0.35, 0.45, -0.35, 0.0, 0.05, -0.35, 0.45, 0.35, 0.45], np.float32)


class Graph:
    """A tiny builder: every call adds a node or an initializer and returns the new tensor's name."""

    def __init__(self, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, arr: np.ndarray, prefix: str = "w") -> str:
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def rand(self, shape: tuple[int, ...], scale: float) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op: str, inputs: list[str], out: str | None = None, **attrs: object) -> str:
        out = out or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(f"n{op.lower()}"), **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True) -> str:
        w = self.rand((cout, cin, k, k), (2.0 / (cin * k * k)) ** 0.5)
        b = self.const(np.zeros(cout, np.float32))
        y = self.op("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        return self.op("Relu", [y]) if relu else y

    def linear(self, x: str, cin: int, cout: int, scale: float | None = None) -> str:
        return self.op("MatMul", [x, self.rand((cin, cout), scale or cin**-0.5)])

    def save(self, path: Path, inputs: list, outputs: list, name: str) -> None:
        g = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="modelplat-standin")
        m.ir_version = 8
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(m, str(path))


# ------------------------------------------------------------------ transformer blocks (full CLIP)
def _layernorm(g: Graph, x: str, d: int) -> str:
    scale, bias = g.const(np.ones(d, np.float32)), g.const(np.zeros(d, np.float32))
    return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)


def _attention(g: Graph, x: str, d: int, heads: int, seq: int, mask: str | None) -> str:
    hd = d // heads
    shape = g.const(np.array([1, seq, heads, hd], np.int64))
    q, k, v = (g.op("Reshape", [g.linear(x, d, d), shape]) for _ in range(3))
    q = g.op("Transpose", [q], perm=[0, 2, 1, 3])
    k = g.op("Transpose", [k], perm=[0, 2, 3, 1])
    v = g.op("Transpose", [v], perm=[0, 2, 1, 3])
    s = g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.array(hd**-0.5, np.float32))])
    if mask:
        s = g.op("Add", [s, mask])
    o = g.op("MatMul", [g.op("Softmax", [s], axis=-1), v])
    o = g.op("Reshape", [g.op("Transpose", [o], perm=[0, 2, 1, 3]), g.const(np.array([1, seq, d], np.int64))])
    return g.linear(o, d, d)


def _block(g: Graph, x: str, d: int, seq: int, mask: str | None = None) -> str:
    x = g.op("Add", [x, _attention(g, _layernorm(g, x, d), d, 12, seq, mask)])
    h = g.linear(_layernorm(g, x, d), d, 4 * d)
    h = g.op("Mul", [h, g.op("Sigmoid", [g.op("Mul", [h, g.const(np.array(1.702, np.float32))])])])  # QuickGELU
    return g.op("Add", [x, g.linear(h, 4 * d, d)])


def _cls_projection(g: Graph, x: str, d: int, out: str) -> str:
    cls = g.op("Gather", [x, g.const(np.array(0, np.int64))], axis=1)  # [1, d]
    return g.op("MatMul", [_layernorm(g, cls, d), g.rand((d, 512), d**-0.5)], out=out)


def clip_image(path: Path, full: bool) -> None:
    g = Graph(11)
    if not full:
        p = g.op("AveragePool", ["image"], kernel_shape=[16, 16], strides=[16, 16])
        g.op("MatMul", [g.op("Flatten", [p], axis=1), g.rand((588, 512), 0.05)], out="unnorm_image_features")
    else:
        d, seq = 768, 197
        p = g.op("Conv", ["image", g.rand((d, 3, 16, 16), (3 * 256) ** -0.5)], kernel_shape=[16, 16], strides=[16, 16])
        x = g.op("Transpose", [g.op("Reshape", [p, g.const(np.array([1, d, 196], np.int64))])], perm=[0, 2, 1])
        x = g.op("Concat", [g.rand((1, 1, d), 0.02), x], axis=1)
        x = _layernorm(g, g.op("Add", [x, g.rand((1, seq, d), 0.02)]), d)
        for _ in range(12):
            x = _block(g, x, d, seq)
        _cls_projection(g, x, d, "unnorm_image_features")
    g.save(path, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 224, 224])],
           [helper.make_tensor_value_info("unnorm_image_features", TensorProto.FLOAT, [1, 512])], "clip_image")


def clip_text(path: Path, full: bool) -> None:
    g = Graph(12)
    if not full:
        e = g.op("Gather", [g.rand((VOCAB_SIZE, 16), 1.0), "text"], axis=0)
        m = g.op("ReduceMean", [e], axes=[1], keepdims=0)
        g.op("MatMul", [m, g.rand((16, 512), 0.1)], out="unnorm_text_features")
    else:
        d, seq = 768, 52
        x = g.op("Add", [g.op("Gather", [g.rand((VOCAB_SIZE, d), 0.02), "text"], axis=0), g.rand((1, seq, d), 0.02)])
        x = _layernorm(g, x, d)
        # Padding mask built inside the graph from text != 0, like the cn_clip export.
        keep = g.op("Cast", [g.op("Not", [g.op("Equal", ["text", g.const(np.array(0, np.int64))])])], to=1)
        pad = g.op("Sub", [g.const(np.array(1.0, np.float32)), keep])
        mask = g.op("Mul", [pad, g.const(np.array(-1e4, np.float32))])
        mask = g.op("Reshape", [mask, g.const(np.array([1, 1, 1, seq], np.int64))])
        for _ in range(12):
            x = _block(g, x, d, seq, mask)
        _cls_projection(g, x, d, "unnorm_text_features")
    g.save(path, [helper.make_tensor_value_info("text", TensorProto.INT64, [1, 52])],
           [helper.make_tensor_value_info("unnorm_text_features", TensorProto.FLOAT, [1, 512])], "clip_text")


# ------------------------------------------------------------------ face
def _det_backbone(g: Graph) -> dict[int, tuple[str, int]]:
    """SCRFD-10G-like compute (~7 GMACs at 640x640 with the heads): stem + 4 stages of residual 3x3
    convs; feature maps at strides 8/16/32, each with a 2-conv head tower."""
    x, cin = g.conv("input.1", 3, 24, stride=2), 24
    feats = {}
    for stride, cout, n in ((4, 32, 2), (8, 64, 3), (16, 128, 3), (32, 256, 2)):
        x = g.conv(x, cin, cout, stride=2)
        for _ in range(n):
            x = g.op("Add", [x, g.conv(g.conv(x, cout, cout), cout, cout, relu=False)])
        cin = cout
        if stride >= 8:
            feats[stride] = (g.conv(g.conv(x, cout, cout), cout, cout), cout)
    return feats


def detector(path: Path, full: bool) -> None:
    g = Graph(13)
    feats = _det_backbone(g) if full else {}
    outs: dict[str, str] = {}
    for s, (sc, bb, kp) in DET_NAMES.items():
        pooled = g.op("AveragePool", ["input.1"], kernel_shape=[s, s], strides=[s, s])
        ws = np.zeros((2, 3, 1, 1), np.float32)
        if s == 32:  # only stride 32 "sees" faces: one hit per 32x32 red cell
            ws[:, 0], ws[:, 1], ws[:, 2] = 4.0, -4.0, -4.0
        heads = {"s": (2, ws, np.full(2, -8.0 if s == 32 else -20.0, np.float32)),
                 "b": (8, np.zeros((8, 3, 1, 1), np.float32), np.full(8, 2.0, np.float32)),
                 "k": (20, np.zeros((20, 3, 1, 1), np.float32), np.tile(KPS, 2))}
        for tag, (cout, w, b) in heads.items():
            y = g.op("Conv", [pooled, g.const(w), g.const(b)], kernel_shape=[1, 1])
            if full:  # the real head's output conv on the tower, added at 1e-3 scale
                f, c = feats[s]
                hf = g.op("Tanh", [g.conv(f, c, cout, k=1, relu=False)])
                y = g.op("Add", [y, g.op("Mul", [hf, g.const(np.array(1e-3, np.float32))])])
            last = {"s": 1, "b": 4, "k": 10}[tag]
            r = g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 3, 1]), g.const(np.array([-1, last], np.int64))],
                     out={"s": None, "b": bb, "k": kp}[tag])
            if tag == "s":
                g.op("Sigmoid", [r], out=sc)
            outs[tag + str(s)] = r
    order = [n[i] for i in range(3) for n in DET_NAMES.values()]
    dims = {n: [1, 4, 10][i] for i in range(3) for n in (v[i] for v in DET_NAMES.values())}
    g.save(path, [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
           [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, dims[n]]) for n in order], "scrfd_standin")


def recognizer(path: Path, full: bool) -> None:
    g = Graph(14)
    if not full:
        p = g.op("AveragePool", ["input.1"], kernel_shape=[8, 8], strides=[8, 8])
        g.op("MatMul", [g.op("Flatten", [p], axis=1), g.rand((588, 512), 0.05)], out="683")
    else:  # IResNet-50: stem + [3, 4, 14, 3] residual blocks, 512 x 7 x 7 -> FC 512
        x, cin = g.conv("input.1", 3, 64), 64
        for cout, n in ((64, 3), (128, 4), (256, 14), (512, 3)):
            for i in range(n):
                stride = 2 if i == 0 else 1
                y = g.conv(g.conv(x, cin, cout), cout, cout, stride=stride, relu=False)
                y = g.op("Mul", [y, g.const(np.array(0.2, np.float32))])  # keep random activations bounded
                short = x if (stride == 1 and cin == cout) else g.conv(x, cin, cout, k=1, stride=stride, relu=False)
                x, cin = g.op("Add", [short, y]), cout
        g.op("MatMul", [g.op("Flatten", [x], axis=1), g.rand((512 * 49, 512), (512 * 49) ** -0.5)], out="683")
    g.save(path, [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
           [helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, 512])], "arcface_standin")


def vocab(path: Path) -> None:
    """A stand-in BERT Chinese vocabulary with the real special-token ids ([PAD]=0, [UNK]=100,
    [CLS]=101, [SEP]=102, [MASK]=103), ASCII, word pieces and CJK characters; 21128 lines."""
    toks = ["[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    toks += [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    toks += [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)] + [f"##{d}" for d in range(10)]
    cjk = 0x4E00
    while len(toks) < VOCAB_SIZE:
        toks.append(chr(cjk))
        cjk += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(toks) + "\n", encoding="utf-8")


def build(out: Path, full: bool = False, clip_name: str = "vit-b-16", pack: str = "buffalo_l") -> Path:
    """Write <out>/clip/{name}.img/.txt.fp32.onnx + vocab.txt and <out>/insightface/models/<pack>/."""
    clip_dir, face_dir = out / "clip", out / "insightface" / "models" / pack
    clip_image(clip_dir / f"{clip_name}.img.fp32.onnx", full)
    clip_text(clip_dir / f"{clip_name}.txt.fp32.onnx", full)
    vocab(clip_dir / "vocab.txt")
    detector(face_dir / "det_10g.onnx", full)
    recognizer(face_dir / "w600k_r50.onnx", full)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m services.vision.standins OUT_DIR [--full]")
    print(build(Path(sys.argv[1]), full="--full" in sys.argv))
