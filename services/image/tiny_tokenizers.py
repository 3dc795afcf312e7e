"""Tokenizers for the offline pipelines, made locally with the `tokenizers` library (no hub access).

The recipe and its pitfalls are in shared/reference/diffusers-cpu.md: CLIP needs model_max_length
(FluxPipeline pads to it), transformers 5 rebuilds the pre-tokenizer from the class so the vocabulary
is trained with the class's own split regex, and the Qwen tokenizer needs a pad token and a Qwen3-style
chat template that accepts `enable_thinking`.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "a photo of a cat sitting on a red sofa",
    "a watercolor painting of a mountain lake at sunrise",
    "a futuristic city skyline at night, neon lights, 4k",
    "portrait of an old man with a beard, studio lighting",
    "a bowl of fruit on a wooden table, oil painting",
    "a small dog running on the beach with waves in the background",
    "Describe the image by detailing the color, quantity, text, shape, size, texture, "
    "spatial relationships of the objects and background: ",
    "user\nassistant\n",  # role names become single tokens, as in the real vocabulary
]
QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# One user turn, add_generation_prompt, enable_thinking=False -> empty think block (what Ovis uses).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


def _train_merges(split_regex: str, lowercase: bool, suffix: str, vocab_size: int) -> list[tuple[str, str]]:
    suffix_kw = {"end_of_word_suffix": suffix} if suffix else {}  # None is rejected by tokenizers 0.23
    tok = Tokenizer(models.BPE(**suffix_kw))
    tok.normalizer = normalizers.Sequence([normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else []))
    split = pre_tokenizers.Split(Regex(split_regex), behavior="removed" if lowercase else "isolated",
                                 invert=lowercase)
    tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                  use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **suffix_kw)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def _vocab(merges: list[tuple[str, str]], suffix: str, specials: list[str]) -> tuple[dict, list]:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for sym in alphabet + ([a + suffix for a in alphabet] if suffix else []):
        vocab.setdefault(sym, len(vocab))
    kept = []
    for a, b in merges:
        if a in vocab and b in vocab:
            kept.append((a, b))
            vocab.setdefault(a + b, len(vocab))
    for s in specials:
        vocab.setdefault(s, len(vocab))
    return vocab, kept


def _write(folder: Path, vocab: dict, merges: list, tokenizer_class: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class}))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def clip_tokenizer(tmp: Path) -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = _vocab(_train_merges(CLIP_SPLIT, True, "</w>", 900), "</w>", ["<|startoftext|>", "<|endoftext|>"])
    _write(tmp / "clip_tok", vocab, merges, "CLIPTokenizer")
    return CLIPTokenizer.from_pretrained(tmp / "clip_tok", model_max_length=77)


def t5_tokenizer(tmp: Path) -> Any:
    from transformers import T5TokenizerFast

    words = sorted({w.strip(",:").lower() for line in CORPUS for w in line.split()} - {""})
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -3.0) for w in words]
    pieces += [("\u2581" + c, -5.0) for c in chars] + [(c, -6.0) for c in chars]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement="\u2581",
                                                                          prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                       special_tokens=[("</s>", 1)])
    (tmp / "t5_tok").mkdir(parents=True, exist_ok=True)
    tok.save(str(tmp / "t5_tok" / "tokenizer.json"))
    return T5TokenizerFast.from_pretrained(tmp / "t5_tok", model_max_length=512)


def qwen_tokenizer(tmp: Path) -> Any:
    from tokenizers import AddedToken
    from transformers import Qwen2TokenizerFast

    vocab, merges = _vocab(_train_merges(QWEN_SPLIT, False, "", 700), "", ["<|endoftext|>"])
    _write(tmp / "qwen_tok", vocab, merges, "Qwen2Tokenizer")
    tok = Qwen2TokenizerFast.from_pretrained(tmp / "qwen_tok", unk_token=None, bos_token=None,
                                             eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                             model_max_length=131072)
    specials = [AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")]
    tok.add_tokens(specials, special_tokens=True)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    tok.eos_token = "<|im_end|>"
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    return tok
