"""Generation with the engine's own model: the KV-cache generator, sampling, files in and out
(sharded, resumable), the vLLM backend, and evaluation with ADELIE's scorers."""
