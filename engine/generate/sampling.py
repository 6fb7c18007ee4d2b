"""Choosing the next token in fp32: greedy, temperature, top-k, top-p, with counter-based noise.

Reproducibility: a sample's randomness is a pure function of its key and the index of the token
within the sample, never of a generator's state. The key is a 64-bit hash of (seed, dataset,
prompt id, sample index) (`sample_key`); vocabulary entry j of the sample's t-th token gets
u = hash(key, t, j) in (0, 1) and the Gumbel noise g = -log(-log u). The token is

    argmax_j  logits_j / temperature + g_j      over the tokens top-k / top-p keep,

which is a draw from softmax(logits / temperature) renormalised over those tokens (the Gumbel-max
trick). So a sample comes out the same in any batch, bucket, order or number of ranks (as far as
the logits themselves are batch-invariant), and the whole step is free of host syncs and
generator objects: it runs inside a CUDA graph. temperature 0 is greedy argmax (no noise; ties go
to the lowest id, as in transformers).

The hash is Wellons' "lowbias32" integer mixer on 32-bit values held in int64, with products
split so that no int64 multiply overflows (signed overflow is not something to rely on).
"""
from __future__ import annotations

import hashlib

import torch

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def sample_key(seed: int, dataset: str, prompt_id: str, sample_index: int) -> tuple[int, int]:
    """Two 32-bit words from blake2b of (seed, dataset, prompt id, sample index)."""
    digest = hashlib.blake2b(f"{seed}\0{dataset}\0{prompt_id}\0{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32): the 16-bit halves of c keep products < 2^49."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: a bijection of [0, 2^32) with good avalanche; int64 in, int64 out."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def gumbel_noise(keys: torch.Tensor, counters: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """keys (R, 2) int64 (two 32-bit words), counters (R,) int64 -> Gumbel noise (R, V) fp32."""
    row = hash32(hash32(keys[:, 0] ^ _mul32(counters & _M32, _GOLDEN)) ^ keys[:, 1])  # (R,)
    j = torch.arange(vocab_size, device=keys.device, dtype=torch.int64)
    bits = hash32(hash32(_mul32(j, _GOLDEN)[None, :] ^ row[:, None]) ^ keys[:, 1:2])  # (R, V)
    u = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # 24 random bits, in (0, 1)
    return -torch.log(-torch.log(u))


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """-inf outside the top_k largest (0 = off) and outside the nucleus: the most likely tokens
    whose probability mass, counted before each token, stays below top_p (1 = off; the most
    likely token is always kept). logits (R, V) fp32, already divided by the temperature."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # the mass before this token already reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def sample_next(logits: torch.Tensor, keys: torch.Tensor, counters: torch.Tensor,
                temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The next token of each row: logits (R, V) (cast to fp32), keys (R, 2), counters (R,) =
    the index of this token within its sample -> (R,) int64."""
    logits = logits.float()
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    return (logits + gumbel_noise(keys, counters, logits.shape[-1])).argmax(dim=-1)
