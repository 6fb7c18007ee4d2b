"""Helpers for the generation tests (a unique module name: conftest.py files share theirs)."""
import torch

from ie_engine.engine.model.config import ModelConfig
from ie_engine.engine.model.transformer import build_model


def tiny_model(vocab_size: int, n_kv_heads: int = 2, seed: int = 1, max_seq_len: int = 512, dim: int = 64,
               n_layers: int = 2):
    """A random fp32 model whose logits are peaked enough for greedy ties to be unlikely."""
    cfg = ModelConfig(dim=dim, n_layers=n_layers, n_heads=4, n_kv_heads=n_kv_heads, vocab_size=vocab_size,
                      multiple_of=32, max_seq_len=max_seq_len)
    model = build_model(cfg, "cpu")
    model.init_weights(seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # not all ones, so the HF name mapping of the norms is tested
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        model.output.weight.mul_(30)
    return model.eval().requires_grad_(False)
