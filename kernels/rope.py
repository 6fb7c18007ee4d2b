"""Rotary position embedding, Meta LLaMA-2 convention (interleaved pairs).

For i in [0, D/2) the pair (x[2i], x[2i+1]) of every head is rotated by the angle p * theta_i of
the token's position p (the complex multiply of Meta's apply_rotary_emb):
    out[2i]   = x[2i] * cos - x[2i+1] * sin
    out[2i+1] = x[2i] * sin + x[2i+1] * cos
cos/sin are tables (max_pos, D/2) whose row p holds cos/sin(p * theta_i). positions (B, T) int64
gives each token's row (packed rows restart at 0 per document); None means arange(T) in every row.
Positions must lie in [0, max_pos): the Triton path does not check (a check would sync the GPU).

Numerical contract (the reference and the Triton kernels agree on it):
- Forward: x and the table entries are upcast to fp32, the rotation is fp32, one cast back to the
  input dtype (q_out has q's dtype, k_out k's).
- Saved for backward: cos, sin and positions only; the rotation is linear, so q and k are not kept.
- Backward: the inverse rotation (by -angle: the same kernel with sin negated), fp32, one cast.
  No gradient flows to cos/sin (they are fixed buffers).
- Nothing is done in place; outputs are fresh contiguous (B, T, H, D) tensors. q, k and the
  upstream gradients may be non-contiguous views (e.g. slices of a fused qkv projection): the
  kernels take batch/time/head strides, so only a strided last dim forces a copy.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ie_engine.kernels import _dispatch
from ie_engine.kernels._dispatch import tl, triton


def _gather_tables(cos, sin, positions, B, T):
    """cos/sin rows for each token, shaped to broadcast over heads: (B or 1, T, 1, D/2)."""
    if positions is None:
        return cos[:T][None, :, None, :], sin[:T][None, :, None, :]
    positions = positions.expand(B, T)
    return cos[positions][:, :, None, :], sin[positions][:, :, None, :]


def rotate_ref(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (B, T, H, D) by the angles whose cos/sin are c, s (.., D/2).
    Math in at least fp32 (float64 stays float64, so tests can run the spec in float64)."""
    acc = torch.promote_types(torch.promote_types(x.dtype, c.dtype), torch.float32)
    c, s = c.to(acc), s.to(acc)
    xf = x.to(acc).unflatten(-1, (-1, 2))  # (B, T, H, D/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.flatten(-2).to(x.dtype)


def apply_rope_ref(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   positions: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The spec and the CPU path. q (B, T, Hq, D), k (B, T, Hk, D), cos/sin (max_pos, D/2),
    positions (B, T) int64 or None (= arange(T) in every row)."""
    c, s = _gather_tables(cos, sin, positions, q.shape[0], q.shape[1])
    return rotate_ref(q, c, s), rotate_ref(k, c, s)


@triton.jit
def _rotate_heads(X, XO, x_off, o_off, stride_h, stride_oh, n_heads, HALF, c, s,
                  BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr):
    """Rotate all heads of one token. The (head, D) tile is loaded flat, so each thread gets
    wide contiguous loads, then viewed as (head, pair, even/odd) and split into x[2i], x[2i+1]."""
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, 2 * BLOCK_P)[None, :]
    mask = (h < n_heads) & (d < 2 * HALF)
    x = tl.load(X + x_off + h * stride_h + d, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_H, 2 * BLOCK_P)
    x0, x1 = tl.split(tl.reshape(x, (BLOCK_H, BLOCK_P, 2)))  # (BLOCK_H, BLOCK_P) each
    out = tl.reshape(tl.join(x0 * c - x1 * s, x0 * s + x1 * c), (BLOCK_H, 2 * BLOCK_P))
    tl.store(XO + o_off + h * stride_oh + d, out.to(XO.dtype.element_ty), mask=mask)


@triton.jit
def _rope_fwd_kernel(Q, K, QO, KO, COS, SIN, POS,
                     sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sqo_b, sqo_t, sqo_h, sko_b, sko_t, sko_h,
                     spos_b, spos_t, stride_cos, stride_sin, T, Hq, Hk, HALF,
                     HAS_POS: tl.constexpr, INVERSE: tl.constexpr,
                     BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_P: tl.constexpr):
    """One program per token (b, t): all q heads and all k heads share its cos/sin row.
    INVERSE rotates by -angle (the backward pass)."""
    tok = tl.program_id(0).to(tl.int64)
    b = tok // T
    t = tok % T
    if HAS_POS:
        pos = tl.load(POS + b * spos_b + t * spos_t).to(tl.int64)
    else:
        pos = t
    p = tl.arange(0, BLOCK_P)
    pmask = p < HALF
    c = tl.load(COS + pos * stride_cos + p, mask=pmask, other=0.0).to(tl.float32)[None, :]
    s = tl.load(SIN + pos * stride_sin + p, mask=pmask, other=0.0).to(tl.float32)[None, :]
    if INVERSE:
        s = -s
    _rotate_heads(Q, QO, b * sq_b + t * sq_t, b * sqo_b + t * sqo_t, sq_h, sqo_h, Hq, HALF, c, s,
                  BLOCK_HQ, BLOCK_P)
    _rotate_heads(K, KO, b * sk_b + t * sk_t, b * sko_b + t * sko_t, sk_h, sko_h, Hk, HALF, c, s,
                  BLOCK_HK, BLOCK_P)


def _rope_launch(q, k, cos, sin, positions, inverse: bool):
    """Rotate q (B, T, Hq, D) and k (B, T, Hk, D) into fresh contiguous tensors."""
    B, T, Hq, D = q.shape
    Hk = k.shape[2]
    if D % 2 or k.shape[:2] != q.shape[:2] or k.shape[3] != D or cos.shape[-1] * 2 != D:
        raise ValueError(f"apply_rope: q {tuple(q.shape)}, k {tuple(k.shape)}, cos {tuple(cos.shape)}")
    if positions is None and T > cos.shape[0]:
        raise ValueError(f"apply_rope: {T} tokens but rope tables hold only {cos.shape[0]} positions")
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if positions is None:
        pos, spos = cos, (0, 0)  # POS is never read when HAS_POS is False
    else:
        pos = positions.expand(B, T)
        spos = pos.stride()
    if B * T > 0:
        _rope_fwd_kernel[(B * T,)](
            q, k, qo, ko, cos, sin, pos, *q.stride()[:3], *k.stride()[:3], *qo.stride()[:3],
            *ko.stride()[:3], *spos, cos.stride(0), sin.stride(0), T, Hq, Hk, D // 2,
            HAS_POS=positions is not None, INVERSE=inverse, BLOCK_HQ=triton.next_power_of_2(Hq),
            BLOCK_HK=triton.next_power_of_2(Hk), BLOCK_P=triton.next_power_of_2(D // 2), num_warps=4)
    return qo, ko


class _RoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin, positions):
        ctx.save_for_backward(cos, sin, positions)
        return _rope_launch(q, k, cos, sin, positions, inverse=False)

    @staticmethod
    def backward(ctx, dq_out, dk_out):
        cos, sin, positions = ctx.saved_tensors
        dq, dk = _rope_launch(dq_out, dk_out, cos, sin, positions, inverse=True)
        return dq, dk, None, None, None


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               positions: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (B, T, Hq, D) and k (B, T, Hk, D) by their token positions; returns (q_out, k_out)
    in the input dtypes. Triton on CUDA, else the reference (kernels/_dispatch.py)."""
    if _dispatch.use_triton(q):
        return _RoPEFunction.apply(q, k, cos, sin, positions)
    return apply_rope_ref(q, k, cos, sin, positions)
