"""The API gateway: one front door speaking OpenAI, Ollama and MT Photos to per-model backends."""
