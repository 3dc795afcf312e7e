"""The `tiny-vlm` dev/test checkpoint: a random-weight LLaVA (CLIP vision tower + the tiny Llama).

LLaVA is the simplest vision architecture vLLM serves: a CLIP ViT, a two-layer projector and a Llama.
Its image processor has a PIL backend in transformers 5, so no torchvision is needed (the PyPI
torchvision is a CUDA build that breaks the CPU torch). Images are resized to 56x56 and cut into 14x14
patches: 16 image tokens per image. Output is gibberish by design, like tiny-llm.
"""

from __future__ import annotations

from pathlib import Path

from services.llm.tiny_model import SEED, build_tokenizer

IMAGE_TOKEN = "<image>"
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
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava.processing_llava import LlavaProcessor

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tok.chat_template = VLM_TEMPLATE
    image_proc = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    proc = LlavaProcessor(image_processor=image_proc, tokenizer=tok, patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=VLM_TEMPLATE, image_token=IMAGE_TOKEN)
    proc.save_pretrained(out)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                              image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=64)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       tie_word_embeddings=False)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                      vision_feature_select_strategy="default", vision_feature_layer=-2,
                      image_seq_length=(IMAGE_SIZE // PATCH) ** 2, torch_dtype="bfloat16")
    torch.manual_seed(SEED)
    LlavaForConditionalGeneration(cfg).to(torch.bfloat16).save_pretrained(out)
    return out
