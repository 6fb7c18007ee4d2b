"""The model's architecture: ModelConfig (Meta's params.json field names) and named presets.

Field names are Meta's params.json names, so a params.json loads as ModelConfig(**json.load(f)).
Derived sizes (head_dim, the SwiGLU hidden size) are computed from them, gpt-fast style.

Three families, one model: Llama-2 is the default; Llama-3.x adds `rope_scaling` (Llama-3.1+
frequency scaling) and, for its small models, `tie_embeddings`; Qwen2.5 adds `qkv_bias`
(biases on the q/k/v projections only) and ties its small models' embeddings too. Everything
else they differ in (GQA, RoPE theta, RMSNorm epsilon, vocabulary, SwiGLU width) is a number.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1+ RoPE frequency scaling (Hugging Face rope_type "llama3"): wavelengths longer
    than original_max_seq_len / low_freq_factor are stretched by `factor`, those shorter than
    original_max_seq_len / high_freq_factor are kept, the band between is interpolated."""
    factor: float = 8.0
    """Stretch of the low frequencies (Llama-3.1: 8, Llama-3.2: 32)."""
    low_freq_factor: float = 1.0
    """original_max_seq_len / low_freq_factor: longer wavelengths are stretched by `factor`."""
    high_freq_factor: float = 4.0
    """original_max_seq_len / high_freq_factor: shorter wavelengths are not scaled."""
    original_max_seq_len: int = 8192
    """The pre-training context the factors refer to (HF original_max_position_embeddings)."""


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
    rope_scaling: RopeScaling | None = None
    """Llama-3.1+ RoPE frequency scaling; None = plain RoPE (Llama-2, Qwen2.5)."""
    qkv_bias: bool = False
    """Bias on the q/k/v projections, none on the output projection (Qwen2)."""
    tie_embeddings: bool = False
    """The output head is the token embedding matrix, one parameter (Llama-3.2-1B/3B, Qwen2.5 <= 3B)."""
    attn_backend: str = "auto"
    """Attention backend (engine/model/attention.py): auto, flash, flex or sdpa; resolved on the first forward."""

    def __post_init__(self):
        if isinstance(self.rope_scaling, dict):  # from a saved config (dataclasses.asdict)
            self.rope_scaling = RopeScaling(**self.rope_scaling)
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
    def from_params_json(cls, path: str | Path, vocab_size: int = 32000,
                         rope_scaling_factor: float = 8.0) -> "ModelConfig":
        """Meta's params.json (its vocab_size is -1: the tokenizer decides). Llama-3.1+'s
        `use_scaled_rope` becomes `rope_scaling` with Meta's constants (low 1, high 4, original
        context 8192) and the file's `rope_scaling_factor` if it has one, else the argument:
        the file may not say it, and it differs by release (3.1: 8; 3.2: 32, as in its HF config)."""
        params = json.loads(Path(path).read_text())
        if params.get("vocab_size", -1) <= 0:
            params["vocab_size"] = vocab_size
        factor = params.pop("rope_scaling_factor", None) or rope_scaling_factor
        if params.pop("use_scaled_rope", False):
            params["rope_scaling"] = RopeScaling(factor=factor)
        return cls(**params)


PRESETS: dict[str, ModelConfig] = {
    # A few-M-parameter LLaMA for the embedded default and tests (GQA on, so it is exercised).
    "debug": ModelConfig(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=4096,
                         multiple_of=64, max_seq_len=512),
    # The embedded SFT/DPO default: debug's width with the output head tied to the embedding,
    # which makes copying a span from the prompt (what extraction mostly is) much easier to learn,
    # and 2 blocks, the fewest an induction (copy) circuit needs: half the compute of 4 blocks per
    # step and the copying phase earlier in steps (bench/results/default_sweep.jsonl, e6-L2).
    "default-ie": ModelConfig(dim=256, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=4096,
                              multiple_of=64, max_seq_len=512, tie_embeddings=True),
    # ~100M parameters (101.9M: 61.0M in the blocks, 41.0M in embedding + head) with Llama-2's
    # vocabulary: the CPU generation benchmark's "real-sized" model.
    "llama2-100m": ModelConfig(dim=640, n_layers=12, n_heads=10, vocab_size=32000),
    # A 1B-class LLaMA-2-shaped config for GPU benchmarks (TinyLlama-like widths).
    "llama2-1b": ModelConfig(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4),
    "llama2-7b": ModelConfig(dim=4096, n_layers=32, n_heads=32),
    "llama2-13b": ModelConfig(dim=5120, n_layers=40, n_heads=40),
    "llama2-70b": ModelConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
                              ffn_dim_multiplier=1.3),
    # ADELIE's other bases, from their Hugging Face config.json (tests/model/test_families.py
    # checks the parameter counts against transformers' own model of the published config).
    "llama3.2-1b": ModelConfig(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256,
                               ffn_dim_multiplier=1.5, rope_theta=500000.0, max_seq_len=131072,
                               rope_scaling=RopeScaling(factor=32.0), tie_embeddings=True),
    "llama3.2-3b": ModelConfig(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, vocab_size=128256,
                               ffn_dim_multiplier=1.0, rope_theta=500000.0, max_seq_len=131072,
                               rope_scaling=RopeScaling(factor=32.0), tie_embeddings=True),
    # Qwen2.5's embedding is padded to 151,936 rows; its tokenizer has 151,665 ids.
    "qwen2.5-1.5b": ModelConfig(dim=1536, n_layers=28, n_heads=12, n_kv_heads=2, vocab_size=151936,
                                ffn_dim_multiplier=2.1875, norm_eps=1e-6, rope_theta=1000000.0,
                                max_seq_len=131072, qkv_bias=True, tie_embeddings=True),
}


def build_model_config(preset: str, **overrides) -> ModelConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **overrides)
