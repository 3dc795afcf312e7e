"""Image generation service (diffusers): FLUX.1-dev and Ovis-Image behind the OpenAI image API.

Modules that the GPU benchmark imports (engine, speed, cfg_batch, tiny_tokenizers) depend only on
torch/diffusers/transformers, so they run on the device image without the web stack.
"""
