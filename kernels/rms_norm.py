"""RMSNorm (LLaMA): y = weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype).

Numerical contract (the reference and the Triton kernels agree on it):
- Forward: x is upcast to fp32; the mean of squares, rsqrt and the normalisation are fp32; the
  normalised row is cast back to x.dtype (as Hugging Face's LlamaRMSNorm does) and only then
  multiplied by weight, in fp32, with one rounding to the output dtype. The output dtype is
  torch.promote_types(weight.dtype, x.dtype), i.e. x.dtype when the two match.
- Saved for backward: x (as a (rows, H) view, copied only if its last dim is strided), weight,
  and rstd = 1 / sqrt(mean(x^2) + eps) per row in fp32 (4 bytes a row; nothing of size x).
- Backward: all math in fp32 from the saved x and rstd. The cast of the normalised row to
  x.dtype is treated as the identity for dx (as autograd does for .to()).
  dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * weight, xhat = x * rstd; stored in x.dtype.
  dweight = sum over rows of dy * xhat.to(x.dtype): each Triton program accumulates its block of
  rows in an fp32 register row, writes one fp32 partial row, and the partials are summed in fp32
  by torch before the single cast to weight.dtype.
- Nothing is done in place; the output and dx are fresh contiguous tensors.
"""
from __future__ import annotations

import torch

from ie_engine.kernels import _dispatch
from ie_engine.kernels._dispatch import tl, triton

MAX_FUSED_H = 65536  # one row must fit in one program's registers


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The spec and the CPU path: Meta's / Hugging Face's LLaMA RMSNorm, plain autograd.
    Upcasts to at least fp32 (x.float() for bf16/fp16/fp32; float64 stays float64 so that tests
    can run the spec itself in float64)."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


@triton.jit
def _rms_norm_fwd_kernel(X, W, Y, RSTD, stride_x, stride_y, H, eps, BLOCK_H: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    tl.store(RSTD + row, rstd)
    xhat = (x * rstd).to(X.dtype.element_ty).to(tl.float32)  # HF's cast before the weight
    tl.store(Y + row * stride_y + cols, (w * xhat).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd_kernel(DY, X, W, RSTD, DX, DW_PARTIAL, stride_dy, stride_x, stride_dx,
                         n_rows, H, rows_per_program, BLOCK_H: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_H,), dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    start64 = row_start.to(tl.int64)  # int64 row offsets: rows * H can pass 2^31
    dy_ptr, x_ptr, dx_ptr = DY + start64 * stride_dy, X + start64 * stride_x, DX + start64 * stride_dx
    rstd_ptr = RSTD + start64
    for _ in range(row_start, row_end):
        dy = tl.load(dy_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr)
        xhat = x * rstd
        dw += dy * xhat.to(X.dtype.element_ty).to(tl.float32)
        g = dy * w
        dx = rstd * (g - xhat * (tl.sum(g * xhat, axis=0) / H))
        tl.store(dx_ptr + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dy_ptr += stride_dy
        x_ptr += stride_x
        dx_ptr += stride_dx
        rstd_ptr += 1
    tl.store(DW_PARTIAL + pid.to(tl.int64) * H + cols, dw, mask=mask)


def _launch_settings(H: int) -> tuple[int, int]:
    """(BLOCK_H, num_warps): one power-of-two block per row; more warps for longer rows."""
    if H > MAX_FUSED_H:
        raise ValueError(f"rms_norm: hidden size {H} > {MAX_FUSED_H} does not fit one program")
    block = triton.next_power_of_2(H)
    num_warps = 32 if block >= 32768 else 16 if block >= 8192 else 8 if block >= 2048 else 4
    return block, num_warps


def _rows(t: torch.Tensor, H: int) -> torch.Tensor:
    """(rows, H) view of t; copied only if the last dim is strided (the kernels take a row stride)."""
    t2 = t.reshape(-1, H)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _n_programs(n_rows: int, device: torch.device) -> int:
    """Backward programs: one per SM on CUDA so each owns one fp32 dweight partial row; a few on
    CPU so the interpreter still exercises the multi-program reduction."""
    if device.type == "cuda":
        return max(1, min(n_rows, torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(n_rows, 4))


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        H = x.shape[-1]
        if weight.shape != (H,):
            raise ValueError(f"rms_norm: weight shape {tuple(weight.shape)} != ({H},)")
        x2 = _rows(x, H)  # (rows, H)
        w = weight.contiguous()
        n_rows = x2.shape[0]
        y = torch.empty((n_rows, H), dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        block, num_warps = _launch_settings(H)
        if n_rows > 0:
            _rms_norm_fwd_kernel[(n_rows,)](x2, w, y, rstd, x2.stride(0), y.stride(0), H, eps,
                                            BLOCK_H=block, num_warps=num_warps)
        ctx.save_for_backward(x2, w, rstd)
        ctx.x_shape, ctx.w_dtype = x.shape, weight.dtype
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, w, rstd = ctx.saved_tensors
        n_rows, H = x2.shape
        dy2 = _rows(dy, H)
        dx = torch.empty((n_rows, H), dtype=x2.dtype, device=x2.device)
        n_prog = _n_programs(n_rows, x2.device)
        partial = torch.empty((n_prog, H), dtype=torch.float32, device=x2.device)  # fp32 dweight rows
        block, num_warps = _launch_settings(H)
        if n_rows > 0:
            _rms_norm_bwd_kernel[(n_prog,)](dy2, x2, w, rstd, dx, partial, dy2.stride(0), x2.stride(0),
                                            dx.stride(0), n_rows, H, triton.cdiv(n_rows, n_prog),
                                            BLOCK_H=block, num_warps=num_warps)
        else:
            partial.zero_()
        dw = partial.sum(0).to(ctx.w_dtype)
        return dx.view(ctx.x_shape), dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim of x (..., H) with weight (H,); same shape as x, dtype
    promote_types(weight.dtype, x.dtype). Triton on CUDA, else the ref (kernels/_dispatch.py)."""
    if _dispatch.use_triton(x):
        return _RMSNormFunction.apply(x, weight, eps)
    return rms_norm_ref(x, weight, eps)
