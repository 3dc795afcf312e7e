"""The `tiny-vlm` dev/test checkpoint: a random-weight Idefics3 (SigLIP-style vision tower, pixel-shuffle
connector, the tiny Llama), i.e. the SmolVLM architecture at toy size.

Why Idefics3 and not LLaVA/PaliGemma/Qwen2-VL: without torchvision (the PyPI build is CUDA-only and
breaks the CPU torch), vLLM 0.32's llava, paligemma, qwen2_vl/qwen2_5_vl, llava_next and gemma3_mm
modules fail to import or to profile (they reach transformers' torchvision-only Pixtral or Qwen2-VL
image processors). Idefics3's vLLM module and its PIL image processor need no torchvision.
Images are resized to 56x56 (no splitting): 16 patches of 14x14, pixel-shuffled 2x2 -> 4 image tokens.
Output is gibberish by design, like tiny-llm.
"""

from __future__ import annotations

from pathlib import Path

from services.llm.tiny_model import SEED, build_tokenizer

IMAGE_SIZE = 56
PATCH = 14

# ChatML where a message's content may be OpenAI-style parts: image parts become <image> placeholders.
VLM_TEMPLATE = """\
{%- for m in messages -%}
<|im_start|>{{ m['role'] }}
{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}\
{% if p['type'] in ('image', 'image_url') %}<image>{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}\
{% endfor %}{% endif %}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}
"""


def build_tiny_vlm(out: Path) -> Path:
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.idefics3.processing_idefics3 import Idefics3Processor

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    tok.add_tokens(["<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])
    edge = {"longest_edge": IMAGE_SIZE}
    image_proc = Idefics3ImageProcessorPil(size=edge, max_image_size=edge, do_image_splitting=False)
    proc = Idefics3Processor(image_processor=image_proc, tokenizer=tok, image_seq_len=(IMAGE_SIZE // PATCH) ** 2 // 4,
                             chat_template=VLM_TEMPLATE)
    proc.save_pretrained(out)
    tok = proc.tokenizer
    vision = Idefics3VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1,
                                  image_size=IMAGE_SIZE, patch_size=PATCH)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       tie_word_embeddings=False)
    cfg = Idefics3Config(vision_config=vision.to_dict(), text_config=text.to_dict(), scale_factor=2,
                         image_token_id=proc.image_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False, torch_dtype="bfloat16")
    torch.manual_seed(SEED)
    Idefics3ForConditionalGeneration(cfg).to(torch.bfloat16).save_pretrained(out)
    return out
