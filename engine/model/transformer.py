"""LLaMA in plain PyTorch: embed, a loop of blocks, norm, head.

One model for ADELIE's three bases (engine/model/config.py): Llama-2, Llama-3.x (GQA, scaled
RoPE, tied head for the small ones) and Qwen2.5 (q/k/v biases, tied head). A tied head is the
embedding's own Parameter object, so FSDP2 shards it once and fused losses get it as
`self.output.weight`.

Meta's module names (tok_embeddings, layers.N.attention.wq, feed_forward.w1/w2/w3, ...), so
Meta checkpoints map one to one and engine/model/hf_checkpoint.py maps Hugging Face names onto them.
Rotary embeddings use Meta's interleaved-pair convention; the Hugging Face q/k layout differs by a
permutation that hf_checkpoint.py applies on import and export.

The model knows nothing of distribution or devices: build it under `torch.device("meta")`,
let engine/parallel.py wrap it, then materialise with `to_empty()` + `init_weights()` (or load).
RMSNorm, RoPE and SwiGLU go through kernels/, which runs Triton on CUDA and the PyTorch
reference on CPU. Generation passes a KVCache (engine/model/attention.py) to forward; the sampling
loop itself lives in engine/generate/generator.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ie_engine.engine.model.attention import (DocMask, KVCache, attention, build_cache_mask, build_doc_mask,
                                              cached_attention, select_backend)
from ie_engine.engine.model.config import ModelConfig, RopeScaling
from ie_engine.kernels.rms_norm import rms_norm
from ie_engine.kernels.rope import apply_rope
from ie_engine.kernels.swiglu import swiglu


def rope_tables(seq_len: int, head_dim: int, theta: float, device=None, scaling: RopeScaling | None = None):
    """cos/sin of p * theta^(-2i/head_dim) for p < seq_len: two fp32 (seq_len, head_dim // 2).
    With `scaling`, the frequencies are Llama-3.1's (as Meta's apply_scaling and HF's "llama3")."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    if scaling is not None:
        s = scaling
        wavelen = 2 * math.pi / inv_freq
        # long wavelengths: stretched by factor; short: kept; the band between: interpolated
        scaled = torch.where(wavelen > s.original_max_seq_len / s.low_freq_factor, inv_freq / s.factor, inv_freq)
        smooth = (s.original_max_seq_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        medium = (wavelen >= s.original_max_seq_len / s.high_freq_factor) & (wavelen <= s.original_max_seq_len / s.low_freq_factor)
        inv_freq = torch.where(medium, (1 - smooth) * scaled / s.factor + smooth * scaled, scaled)
    angles = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)
    return angles.cos(), angles.sin()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, rope, positions, mask: DocMask, kv=None):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, k, *rope, positions)  # fp32 tables, q/k in compute dtype
        if kv is None:
            out = attention(q, k, v, mask)  # (B, T, n_heads, head_dim)
        else:  # generation: this layer's (k_cache, v_cache)
            out = cached_attention(q, k, v, *kv, positions, mask)
        return self.wo(out.reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up

    def forward(self, x):
        return self.w2(swiglu(self.w1(x), self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg.dim, cfg.hidden_dim)

    def forward(self, x, rope, positions, mask: DocMask, kv=None):
        x = x + self.attention(self.attention_norm(x), rope, positions, mask, kv)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.attn_backend: str | None = None  # cfg.attn_backend resolved on the first forward
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        # A ModuleDict keyed "0".."L-1" keeps Meta's names (layers.0.attention.wq) and lets
        # parallel.py wrap blocks in place without renumbering.
        self.layers = nn.ModuleDict({str(i): TransformerBlock(cfg) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:  # one Parameter under two names; parameters() yields it once
            self.output.weight = self.tok_embeddings.weight
        # RoPE cos/sin for positions < max_seq_len, fp32 (filled by init_weights; not saved):
        # built once, not per forward, and never cast (parallel.py keeps block inputs as they are).
        self.register_buffer("rope_cos", torch.empty(cfg.max_seq_len, cfg.head_dim // 2), persistent=False)
        self.register_buffer("rope_sin", torch.empty(cfg.max_seq_len, cfg.head_dim // 2), persistent=False)

    def forward(self, input_ids, positions=None, doc_ids=None, head_fn=None, cu_seqlens=None, max_seqlen: int = 0,
                cache: KVCache | None = None):
        """input_ids (B, T); positions (B, T) restarting at 0 per document; doc_ids (B, T) with
        -1 for padding; cu_seqlens/max_seqlen: flash-attn's boundaries when the caller has them
        (engine/train/batching.py computes them on the host). Returns logits (B, T, V) fp32, or
        head_fn(hidden (B*T, dim), output weight (V, dim)) when head_fn is given: fused losses
        that never form logits run here, inside forward, so a sharded (FSDP) head weight is
        gathered for them and its gradient reduced.
        cache (generation): without positions the rows are prompts from slot 0 (prefill, causal;
        their keys/values fill the cache); with positions (B, T), the cache slots of the tokens,
        each token attends to its row's slots up to its own (decode)."""
        B, T = input_ids.shape
        if positions is not None and doc_ids is None and cache is None:
            raise ValueError("positions for packed rows need doc_ids too, or documents would see each other")
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.cfg.max_seq_len}")
        h = self.tok_embeddings(input_ids)  # (B, T, dim)
        if self.attn_backend is None:
            self.attn_backend = select_backend(h.device, self.cfg.attn_backend, h.dtype)
        if cache is not None and positions is not None:
            mask = build_cache_mask(self.attn_backend, positions, cache)
        else:
            mask = build_doc_mask(self.attn_backend, doc_ids, T, h.device, cu_seqlens, max_seqlen)
        rope = (self.rope_cos, self.rope_sin)
        for i, block in enumerate(self.layers.values()):
            h = block(h, rope, positions, mask, None if cache is None else (cache.k[i], cache.v[i]))
        h = self.norm(h)
        if head_fn is not None:
            return head_fn(h.flatten(0, 1), self.output.weight)
        return self.output(h).float()

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Initialise every parameter in place (after `to_empty()`): normal(0, 0.02) for
        matrices, the residual projections (wo, w2) scaled by 1/sqrt(2 * n_layers) so the
        residual stream's variance does not grow with depth, ones for the norms, zeros for
        biases. A tied head is the embedding (named once, as tok_embeddings.weight).

        Each parameter draws from its own generator seeded by (seed, index), full-size, and
        keeps its local shard: the same seed gives the same model whatever the sharding.
        Also fills the fp32 RoPE tables on the buffers' device."""
        self.init_rope()
        std_out = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for i, (name, p) in enumerate(self.named_parameters()):
            if name.endswith(("norm.weight", ".bias")):
                p.fill_(0.0 if name.endswith(".bias") else 1.0)
                continue
            std = std_out if name.endswith(("wo.weight", "w2.weight")) else 0.02
            mesh = getattr(p, "device_mesh", None)  # FSDP2 parameters are DTensors
            device = torch.device(mesh.device_type) if mesh is not None else p.device
            gen = torch.Generator(device=device).manual_seed(seed * 100_003 + i)
            full = torch.empty(p.shape, dtype=torch.float32, device=device).normal_(0.0, std, generator=gen)
            if mesh is None:
                p.copy_(full)
            else:
                from torch.distributed.tensor import distribute_tensor
                local = distribute_tensor(full, mesh, p.placements, src_data_rank=None).to_local()
                p.to_local().copy_(local)

    @torch.no_grad()
    def init_rope(self, device: torch.device | str | None = None) -> None:
        """(Re)build the fp32 RoPE tables on `device` (default: where the buffers are): after
        to_empty(), after a load onto meta-built modules, and after a dtype cast of the whole
        model (pure bf16) that rounded them."""
        device = self.rope_cos.device if device is None else device
        cos, sin = rope_tables(self.cfg.max_seq_len, self.cfg.head_dim, self.cfg.rope_theta, device,
                               self.cfg.rope_scaling)
        self.rope_cos, self.rope_sin = cos, sin

    def _apply(self, fn, recurse=True):
        # nn.Module._apply gives each module a new Parameter when the tensor type changes (meta ->
        # cpu in to_empty), which would untie the head: tie it again. (FSDP2's DTensors keep theirs.)
        out = super()._apply(fn, recurse)
        if self.cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        return out

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(cfg: ModelConfig, device: str | torch.device = "meta") -> Transformer:
    with torch.device(device):
        return Transformer(cfg)
