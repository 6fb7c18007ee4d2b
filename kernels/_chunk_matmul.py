"""The chunk matmuls of the fused head (kernels/fused_linear_logprob.py, kernels/cross_entropy.py):
logits, dH and dW of one chunk, with fp32 logits for 16-bit inputs and no weight-sized
temporary per chunk: `torch.mm(..., out_dtype=float32)` / `addmm(..., out_dtype=...)` where this
torch has them (CUDA), else the hidden chunk and one block of weight rows at a time upcast to
fp32 (a block is at most a quarter of the chunk's logits).
"""
from __future__ import annotations

import functools

import torch

HALF = (torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def _has_fp32_out_mm(device_type: str, dtype: torch.dtype) -> bool:
    """Whether torch.mm and torch.addmm take half operands and write fp32 (out_dtype=) on this
    device type: CUDA on recent torch, not CPU. Probed once per (device type, dtype)."""
    try:
        a = torch.randn(8, 8, device=device_type).to(dtype)
        out = torch.empty(8, 8, device=device_type)
        torch.mm(a, a, out_dtype=torch.float32, out=out)
        acc = torch.ones(8, 8, device=device_type)
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    want = a.float() @ a.float()
    return bool(torch.allclose(out, want, rtol=1e-3, atol=1e-3) and torch.allclose(acc, want + 1, rtol=1e-3, atol=1e-3))


def _fp32_out(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether a @ b (both one half dtype) can go straight into the fp32 tensor out."""
    return (a.dtype == b.dtype and a.dtype in HALF and out.dtype == torch.float32
            and _has_fp32_out_mm(out.device.type, a.dtype))


def _logits_(z, h_c, weight, rows):
    """z (c, V) <- h_c @ weight.T, rounded once, to z's dtype. rows: weight rows upcast at a time."""
    if h_c.dtype == weight.dtype == z.dtype:
        torch.mm(h_c, weight.T, out=z)
    elif _fp32_out(h_c, weight, z):
        torch.mm(h_c, weight.T, out_dtype=torch.float32, out=z)
    else:
        h = h_c.to(z.dtype)  # (c, H)
        for v in range(0, weight.shape[0], rows):
            torch.mm(h, weight[v:v + rows].to(z.dtype).T, out=z[:, v:v + rows])


def _grad_hidden_(dh_c, dz, weight, rows):
    """dh_c (c, H) <- dz @ weight, in dh_c's dtype."""
    if dz.dtype == weight.dtype == dh_c.dtype:
        torch.mm(dz, weight, out=dh_c)
    elif dz.dtype == weight.dtype:
        dh_c.copy_(dz @ weight)
    else:
        acc = torch.zeros(dh_c.shape, dtype=dz.dtype, device=dz.device)
        for v in range(0, weight.shape[0], rows):
            acc.addmm_(dz[:, v:v + rows], weight[v:v + rows].to(dz.dtype))
        dh_c.copy_(acc)


def _grad_weight_(dw, dz, h_c, rows):
    """dw (V, H), the fp32 (or wider) accumulator, += dz.T @ h_c."""
    if dz.dtype == h_c.dtype == dw.dtype:
        dw.addmm_(dz.T, h_c)
    elif _fp32_out(dz.T, h_c, dw):
        torch.addmm(dw, dz.T, h_c, out_dtype=torch.float32, out=dw)
    elif dz.dtype == dw.dtype:
        dw.addmm_(dz.T, h_c.to(dw.dtype))
    else:
        h = h_c.to(dw.dtype)
        for v in range(0, dw.shape[0], rows):
            dw[v:v + rows].addmm_(dz[:, v:v + rows].T.to(dw.dtype), h)
