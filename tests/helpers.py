"""Small helpers shared by tests in several folders."""
import numpy as np
import torch


def rel_err(a, b) -> float:
    """Max abs error of a against the reference b, scaled by b's largest magnitude (float64).
    Takes tensors (any device, dtype or grad state), arrays or numbers."""
    a, b = (x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
            for x in (a, b))
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def tiny_model_config(**overrides):
    """A tiny GQA LLaMA config for model tests (fp32, CPU); overrides win."""
    from ie_engine.engine.model.config import ModelConfig
    base = dict(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=97, multiple_of=16, max_seq_len=64)
    return ModelConfig(**{**base, **overrides})


def make_model(cfg, seed: int = 0):
    """A plain (unsharded) model on CPU, initialised from `seed`, in eval mode."""
    from ie_engine.engine.model.transformer import build_model
    model = build_model(cfg, "meta")
    model.to_empty(device="cpu")
    model.init_weights(seed)
    return model.eval()


def sdpa_flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=True, **_):
    """flash_attn_varlen_func's contract from SDPA, for CPU tests of the flash path: q (N, Hq, D),
    k/v (N, Hk, D), causal attention within each [cu[i], cu[i+1]) (extra flash options ignored)."""
    import torch.nn.functional as F
    assert cu_q.dtype == torch.int32 and causal and max_q == int((cu_q[1:] - cu_q[:-1]).max())
    out = torch.empty_like(q)
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1),
                                           is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
        out[a:b] = o.transpose(0, 1)
    return out
