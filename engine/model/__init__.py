"""The model: its config and presets, the LLaMA/Qwen Transformer, attention backends, Hugging Face
checkpoint I/O. Knows nothing of distribution, optimizers or generation."""
