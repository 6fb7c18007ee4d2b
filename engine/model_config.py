"""The model's architecture: ModelConfig (Meta's params.json field names) and named presets.

Field names are Meta's params.json names, so a params.json loads as ModelConfig(**json.load(f)).
Derived sizes (head_dim, the SwiGLU hidden size) are computed from them, gpt-fast style.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ModelConfig:
    dim: int = 4096
    """Model width (hidden size)."""
    n_layers: int = 32
    """Number of transformer blocks."""
    n_heads: int = 32
    """Query heads."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; None means n_heads (no grouping)."""
    vocab_size: int = 32000
    """Tokenizer vocabulary size (Llama-2: 32000)."""
    multiple_of: int = 256
    """The SwiGLU hidden size is rounded up to a multiple of this."""
    ffn_dim_multiplier: float | None = None
    """Extra factor on the SwiGLU hidden size (Llama-2-70B: 1.3)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    rope_theta: float = 10000.0
    """Rotary embedding base."""
    max_seq_len: int = 4096
    """Longest sequence the model is meant for (Llama-2: 4096); the RoPE tables cover it."""
    attn_backend: str = "auto"
    """Attention backend (engine/attention.py): auto, flash, flex or sdpa; resolved on the first forward."""

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim ({self.dim}) must divide by n_heads ({self.n_heads}) and "
                             f"n_heads by n_kv_heads ({self.n_kv_heads})")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"head_dim {self.dim // self.n_heads} must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        # LLaMA's rule: 2/3 of 4*dim, times the optional multiplier, rounded up to multiple_of.
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def from_params_json(cls, path: str | Path, vocab_size: int = 32000) -> "ModelConfig":
        """Meta's params.json (its vocab_size is -1: the tokenizer decides)."""
        params = json.loads(Path(path).read_text())
        if params.get("vocab_size", -1) <= 0:
            params["vocab_size"] = vocab_size
        return cls(**params)


PRESETS: dict[str, ModelConfig] = {
    # A few-M-parameter LLaMA for the embedded default and tests (GQA on, so it is exercised).
    "debug": ModelConfig(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=4096,
                         multiple_of=64, max_seq_len=512),
    # ~100M parameters (101.9M: 61.0M in the blocks, 41.0M in embedding + head) with Llama-2's
    # vocabulary: the CPU generation benchmark's "real-sized" model.
    "llama2-100m": ModelConfig(dim=640, n_layers=12, n_heads=10, vocab_size=32000),
    # A 1B-class LLaMA-2-shaped config for GPU benchmarks (TinyLlama-like widths).
    "llama2-1b": ModelConfig(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4),
    "llama2-7b": ModelConfig(dim=4096, n_layers=32, n_heads=32),
    "llama2-13b": ModelConfig(dim=5120, n_layers=40, n_heads=40),
    "llama2-70b": ModelConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
                              ffn_dim_multiplier=1.3),
}


def build_model_config(preset: str, **overrides) -> ModelConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **overrides)
