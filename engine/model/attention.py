"""Causal attention over packed rows, with the backend chosen at run time.

Rows may hold several documents (doc_ids, (B, T), -1 for padding); a token attends only to
earlier tokens of its own document, so packed documents never see each other.

Backends (same result as running each document alone):
- "flash": flash-attn's varlen kernel on CUDA when flash-attn is installed (the `flash` extra)
  and compute is 16-bit (it rejects fp32): tokens are flattened and cu_seqlens mark the
  documents, so no mask is materialised; cu_seqlens come from the host batch (engine/train/batching.py).
- "flex":  FlexAttention with a document block mask on CUDA without flash-attn: blocks that
  cross documents are skipped, so cost follows the real document lengths. The BlockMask is
  built by one compiled create_block_mask (compiled once per process: torch 2.11's
  `_compile=True` wraps a fresh torch.compile around every call); rows without doc_ids get a
  causal BlockMask that is built once per (T, device) and reused.
- "sdpa":  scaled_dot_product_attention with a dense (B, 1, T, T) boolean mask: the CPU path
  (FlexAttention has no backward on CPU), and the fallback anywhere.
Whatever the backend, the mask is built once per forward (build_doc_mask) and handed to every
layer, so neither layers nor activation-checkpoint recomputes rebuild it.

Generation (engine/generate/generator.py) keeps every layer's keys and values in a preallocated KVCache.
A prefill (prompts from slot 0, right-padded) attends causally with the backend above and keeps
its keys/values; a decode step writes each row's new token at that row's own position and
attends over the row's slots up to it ("cache" mask), so rows of different lengths share a batch
and never see padding: a row's slots past its prompt are overwritten by its own decoded tokens
before anything attends to them. Decode attention reads the cache, which at long contexts
outweighs the weights, so it reads as little of it as it can: with flash-attn,
flash_attn_with_kvcache reads each row's own length; otherwise SDPA reads slots [0, kv_len), and
rows may be split into segments (consecutive rows, each with its own kv_len) so that short rows
do not read as far as the longest.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # optional: only installable on CUDA machines
    from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_varlen_func = flash_attn_with_kvcache = None

BACKENDS = ("auto", "flash", "flex", "sdpa")


def select_backend(device: torch.device, requested: str = "auto", dtype: torch.dtype = torch.bfloat16) -> str:
    """The backend for compute on `device` in `dtype`. auto: flash-attn on CUDA for 16-bit
    compute when installed (it rejects fp32), else FlexAttention on CUDA, SDPA on CPU."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; choose from {BACKENDS}")
    if requested != "auto":
        if requested == "flash" and flash_attn_varlen_func is None:
            raise RuntimeError("attention backend 'flash' needs flash-attn (pip install '.[flash]')")
        return requested
    if device.type == "cuda":
        half = dtype in (torch.float16, torch.bfloat16)
        return "flash" if flash_attn_varlen_func is not None and half else "flex"
    return "sdpa"


@dataclass
class DocMask:
    """What attention needs to keep packed documents apart, built ONCE per forward (not per
    layer, and not again in activation-checkpoint recomputes, which receive the same object)."""
    backend: str
    doc_ids: torch.Tensor | None = None       # (B, T), -1 for padding
    dense: torch.Tensor | None = None         # sdpa: (B, 1, T, T) bool
    block_mask: object = None                 # flex: a BlockMask
    cu_seqlens: torch.Tensor | None = None    # flash: (S + 1,) int32 over the flattened rows
    max_seqlen: int = 0                       # flash: the longest sequence
    kv_len: int = 0                           # cache: slots attended (the dense mask is (B, 1, T, kv_len))
    segments: tuple = ()                      # cache: ((row_end, kv_len), ...) over consecutive rows
    cache_seqlens: torch.Tensor | None = None  # cache with flash: (B,) int32 slots in use per row


@dataclass
class KVCache:
    """Every layer's keys and values for generation, preallocated: k[i], v[i] are
    (B, n_kv_heads, S, head_dim) in the compute dtype (GQA: n_kv_heads, not n_heads). Slot s of
    row b holds the token at position s of row b. `kv_len` is how many slots a decode forward
    attends: a host int, so every shape is static (CUDA graphs round it up to a block).
    `segments` ((row_end, kv_len), ...), optional, lets consecutive groups of rows attend fewer
    slots each (the last row_end is the batch)."""
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    kv_len: int = 0
    segments: tuple = ()

    @classmethod
    def allocate(cls, n_layers: int, batch: int, slots: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> "KVCache":
        shape = (batch, n_kv_heads, slots, head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)])

    @property
    def slots(self) -> int:
        return self.k[0].shape[2]

    def view(self, rows: int, kv_len: int, segments: tuple = ()) -> "KVCache":
        """The first `rows` rows (views: writes land in this cache), attending `kv_len` slots
        (per segment of rows, when given)."""
        return KVCache([k[:rows] for k in self.k], [v[:rows] for v in self.v], kv_len, segments)

    def copy_rows_(self, src: "KVCache", src_rows: torch.Tensor, dst_rows: torch.Tensor) -> None:
        """Row dst_rows[j] <- row src_rows[j] of `src` over src's slots (a prompt's prefill
        copied to each of its samples: copied, not recomputed)."""
        T = src.slots
        for dst, s in zip(self.k + self.v, src.k + src.v):
            dst[:, :, :T].index_copy_(0, dst_rows, s.index_select(0, src_rows))

    def move_rows_(self, src_rows: torch.Tensor, dst_rows: torch.Tensor) -> None:
        """Row dst_rows[j] <- row src_rows[j] within this cache (compaction); all slots."""
        for t in self.k + self.v:
            t.index_copy_(0, dst_rows, t.index_select(0, src_rows))


def cu_seqlens_from_doc_ids(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """flash-attn's sequence boundaries over flattened (B*T) rows: a sequence starts at every row
    start and wherever the document id changes (a row's padding tail is a sequence of its own).
    Run on the host copy of doc_ids (the data loader's CPU batch) so it costs no device sync."""
    B, T = doc_ids.shape
    starts = torch.ones(B, T, dtype=torch.bool, device=doc_ids.device)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_idx = starts.flatten().nonzero().flatten()
    cu = torch.cat([start_idx, start_idx.new_tensor([B * T])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def build_doc_mask(backend: str, doc_ids: torch.Tensor | None, T: int, device: torch.device,
                   cu_seqlens: torch.Tensor | None = None, max_seqlen: int = 0) -> DocMask:
    """The per-forward mask for `backend`. flash: cu_seqlens/max_seqlen from the batch when given
    (computed on the host), else from doc_ids here (one sync per forward)."""
    if backend == "flash":
        if cu_seqlens is None:
            B = 1 if doc_ids is None else doc_ids.shape[0]
            ids = doc_ids if doc_ids is not None else torch.zeros(B, T, dtype=torch.long, device=device)
            cu_seqlens, max_seqlen = cu_seqlens_from_doc_ids(ids)
        return DocMask(backend, doc_ids, cu_seqlens=cu_seqlens.to(device, non_blocking=True), max_seqlen=max_seqlen)
    if doc_ids is None:
        if backend == "flex":  # one causal document per row: the same mask for every forward of this T
            return DocMask(backend, block_mask=_causal_block_mask(T, torch.device(device)))
        return DocMask(backend)
    if backend == "flex":
        return DocMask(backend, doc_ids, block_mask=_flex_block_mask(doc_ids))
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    return DocMask(backend, doc_ids, dense=(same_doc & causal)[:, None])  # (B, 1, T, T)


def build_cache_mask(backend: str, positions: torch.Tensor, cache) -> DocMask:
    """Decode over a KVCache: the token at position p of row b sees slots 0..p of row b.
    flash (one token per row): each row's slot count; else a (B, 1, T, kv_len) boolean mask."""
    if backend == "flash" and positions.shape[1] == 1:
        return DocMask("cache", kv_len=cache.kv_len, cache_seqlens=(positions[:, 0] + 1).to(torch.int32))
    slots = torch.arange(cache.kv_len, device=positions.device)
    return DocMask("cache", dense=(slots <= positions[:, :, None])[:, None], kv_len=cache.kv_len,
                   segments=cache.segments)


def cached_attention(q, k, v, k_cache, v_cache, positions, mask: DocMask):
    """Attention that keeps this forward's keys/values in one layer's cache (B, Hk, S, D).
    Prefill (mask from build_doc_mask, positions None): the rows start at slot 0; causal
    attention over the new tokens, whose keys/values fill slots [0, T). Decode ("cache" mask):
    token t of row b is written to slot positions[b, t] and attends over slots [0, kv_len)."""
    k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, Hk, T, D): the cache's layout
    if mask.backend != "cache":
        T = k.shape[2]
        k_cache[:, :, :T].copy_(k)
        v_cache[:, :, :T].copy_(v)
        if mask.backend != "flash":  # not flex: its block mask would compile anew for every prompt shape
            mask = DocMask("sdpa")
        return attention(q, k.transpose(1, 2), v.transpose(1, 2), mask)
    index = positions[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])  # (B, Hk, T, D)
    k_cache.scatter_(2, index, k)
    v_cache.scatter_(2, index, v)
    if mask.cache_seqlens is not None:  # flash-attn reads each row's own slots, (B, S, Hk, D) views
        return flash_attn_with_kvcache(q, k_cache.transpose(1, 2), v_cache.transpose(1, 2),
                                       cache_seqlens=mask.cache_seqlens, causal=False)
    if not mask.segments:
        return _sdpa_cached(q, k_cache[:, :, :mask.kv_len], v_cache[:, :, :mask.kv_len], mask.dense)
    outs, start = [], 0
    for end, kv in mask.segments:  # each group of rows reads only the slots it uses
        outs.append(_sdpa_cached(q[start:end], k_cache[start:end, :, :kv], v_cache[start:end, :, :kv],
                                 mask.dense[start:end, :, :, :kv]))
        start = end
    return torch.cat(outs)


def _sdpa_cached(q, k, v, dense):
    """q (B, T, Hq, D) over cached k/v (B, Hk, S, D) with a (B, 1, T, S) mask -> (B, T, Hq, D)."""
    B, T, Hq, D = q.shape
    Hk = k.shape[1]
    if T == 1:
        # One query per row: fold each KV head's group of query heads into the query axis
        # (heads g*Hq/Hk .. (g+1)*Hq/Hk - 1 share KV head g), so GQA needs no repeated keys.
        out = F.scaled_dot_product_attention(q.reshape(B, Hk, Hq // Hk, D), k, v, attn_mask=dense)
        return out.reshape(B, 1, Hq, D)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=dense, enable_gqa=Hq != Hk)
    return out.transpose(1, 2)


def attention(q, k, v, mask: DocMask):
    """q (B, T, Hq, D), k/v (B, T, Hk, D) -> (B, T, Hq, D), within documents, causal."""
    if mask.backend == "flash":
        return _flash(q, k, v, mask)
    if mask.backend == "flex":
        return _flex(q, k, v, mask)
    return _sdpa(q, k, v, mask)


def _sdpa(q, k, v, mask: DocMask):
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    gqa = q.shape[1] != k.shape[1]
    if mask.dense is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense, enable_gqa=gqa)
    return out.transpose(1, 2)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


@functools.cache
def _block_mask_builder(cuda: bool):
    """create_block_mask, compiled once on CUDA (the eager version materialises a (B, T, T) mask
    to find the blocks; torchtitan's pattern: a new mask_mod closure per batch does not recompile)."""
    from torch.nn.attention.flex_attention import create_block_mask
    return torch.compile(create_block_mask) if cuda else create_block_mask


def _flex_block_mask(doc_ids: torch.Tensor):
    B, T = doc_ids.shape

    def doc_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (doc_ids[b, q_idx] == doc_ids[b, kv_idx])

    return _block_mask_builder(doc_ids.is_cuda)(doc_causal, B, None, T, T, device=doc_ids.device)


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


@functools.lru_cache(maxsize=16)
def _causal_block_mask(T: int, device: torch.device):
    """Causal over whole rows, any batch size (B=None broadcasts): built once per (T, device)."""
    return _block_mask_builder(device.type == "cuda")(_causal, None, None, T, T, device=device)


def _flex(q, k, v, mask: DocMask):
    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    block_mask = mask.block_mask
    if block_mask is None:  # a mask built without T (none of build_doc_mask's): causal rows
        block_mask = _causal_block_mask(q.shape[2], q.device)
    # Compiled on CUDA (the eager path materialises scores); eager on CPU, where it is only
    # used by tests (forward only: FlexAttention has no CPU backward).
    fn = _compiled_flex() if q.is_cuda else flex_attention
    out = fn(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(1, 2)


def _flash(q, k, v, mask: DocMask):
    B, T, Hq, D = q.shape
    # deterministic=True: flash-attn's backward then avoids atomics (parallel.deterministic).
    out = flash_attn_varlen_func(q.reshape(B * T, Hq, D), k.reshape(B * T, -1, D), v.reshape(B * T, -1, D),
                                 mask.cu_seqlens, mask.cu_seqlens, mask.max_seqlen, mask.max_seqlen, causal=True,
                                 deterministic=torch.are_deterministic_algorithms_enabled())
    return out.view(B, T, Hq, D)
