"""A data-loader batch (CPU tensors from data/cache.py) onto the compute device, with what the
model needs that is cheapest to compute on the host: flash-attn's cu_seqlens / max_seqlen.
"""
from __future__ import annotations

import torch

from ie_engine.engine.model.attention import cu_seqlens_from_doc_ids


def to_device(batch: dict, device: torch.device, with_cu_seqlens: bool = False) -> dict:
    """Move every tensor of `batch` to `device` (non-blocking). with_cu_seqlens: add flash-attn's
    sequence boundaries, computed from the host copy of doc_ids (no device sync per layer or step)."""
    out = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if with_cu_seqlens and "doc_ids" in batch:
        out["cu_seqlens"], out["max_seqlen"] = cu_seqlens_from_doc_ids(batch["doc_ids"])
    return out


def model_inputs(batch: dict) -> dict:
    """The keyword arguments of Transformer.forward that a batch carries."""
    keys = ("positions", "doc_ids", "cu_seqlens", "max_seqlen")
    return {k: batch[k] for k in keys if k in batch}
