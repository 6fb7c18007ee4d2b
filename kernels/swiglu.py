"""SwiGLU gate: silu(gate) * up, the LLaMA feed-forward nonlinearity.

Numerical contract (the reference and the Triton kernels agree on it):
- Forward: gate and up are upcast to fp32; silu(g) = g * sigmoid(g) and the product are fp32;
  one cast to gate.dtype at the end (the plain bf16 PyTorch form, F.silu(gate) * up, rounds
  twice; this rounds once).
- Saved for backward: gate and up only (the views the caller passed; nothing new is stored).
  The product and silu are not saved: backward recomputes sigmoid(gate) in fp32.
- Backward, fp32: dup = dy * silu(g); dgate = dy * up * sigmoid(g) * (1 + g * (1 - sigmoid(g))),
  stored in up.dtype and gate.dtype.
- Nothing is done in place: the output, dgate and dup are fresh contiguous tensors. (Liger writes
  the gradients into gate/up's storage to save memory; we do not, because gate/up may be views of
  a fused projection output that something else still reads.)
- Inputs may be row-strided views, e.g. the two halves of a fused gate_up projection output:
  the kernels take a row stride, so only a strided last dim forces a copy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ie_engine.kernels import _dispatch
from ie_engine.kernels._dispatch import tl, triton

BLOCK_N = 1024  # columns per program: 1024 elements keeps loads wide and registers low


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The spec and the CPU path: fp32 math (float64 stays float64, for tests), one cast at the
    end, plain autograd."""
    acc = torch.promote_types(torch.promote_types(gate.dtype, up.dtype), torch.float32)
    return (F.silu(gate.to(acc)) * up.to(acc)).to(gate.dtype)


@triton.jit
def _swiglu_fwd_kernel(G, U, Y, stride_g, stride_u, stride_y, N, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    y = g * tl.sigmoid(g) * u
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(DY, G, U, DG, DU, stride_dy, stride_g, stride_u, stride_dg, stride_du, N,
                       BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    silu = g * sig
    dg = dy * u * sig * (1.0 + g * (1.0 - sig))
    tl.store(DG + row * stride_dg + cols, dg.to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + row * stride_du + cols, (dy * silu).to(DU.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor, N: int) -> torch.Tensor:
    """(rows, N) view of t; copied only if the last dim is strided (the kernels take a row stride)."""
    t2 = t.reshape(-1, N)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


class _SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        if gate.shape != up.shape:
            raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
        N = gate.shape[-1] if gate.dim() > 0 else 1
        g2, u2 = _rows(gate, N), _rows(up, N)  # (rows, N)
        y = torch.empty(g2.shape, dtype=gate.dtype, device=gate.device)
        if y.numel() > 0:
            grid = (g2.shape[0], triton.cdiv(N, BLOCK_N))
            _swiglu_fwd_kernel[grid](g2, u2, y, g2.stride(0), u2.stride(0), y.stride(0), N,
                                     BLOCK=BLOCK_N, num_warps=4)
        ctx.save_for_backward(g2, u2)
        ctx.shape = gate.shape
        return y.view(gate.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        g2, u2 = ctx.saved_tensors
        N = g2.shape[1]
        dy2 = _rows(dy, N)
        dg = torch.empty(g2.shape, dtype=g2.dtype, device=g2.device)
        du = torch.empty(u2.shape, dtype=u2.dtype, device=u2.device)
        if dg.numel() > 0:
            grid = (g2.shape[0], triton.cdiv(N, BLOCK_N))
            _swiglu_bwd_kernel[grid](dy2, g2, u2, dg, du, dy2.stride(0), g2.stride(0), u2.stride(0),
                                     dg.stride(0), du.stride(0), N, BLOCK=BLOCK_N, num_warps=4)
        return dg.view(ctx.shape), du.view(ctx.shape)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for two tensors of the same shape; same shape and dtype as gate.
    Triton on CUDA, else the reference (kernels/_dispatch.py)."""
    if _dispatch.use_triton(gate):
        return _SwiGLUFunction.apply(gate, up)
    return swiglu_ref(gate, up)
