"""Fused lm-head + log-softmax + gather: per-token log p(label) without the (N, V) logits.

    logp[i] = z[i, labels[i]] - logsumexp_j z[i, j],   z = hidden @ weight.T,   0 where ignored

The op chunks over tokens: each chunk of C rows gets its logits (C, V) from one matmul into a
reused buffer, a row kernel reduces them (online logsumexp over vocab blocks), and the buffer is
reused for the next chunk, so at most C * V logits are alive. C comes from a memory budget
(`_chunk_size`; at least 2048 tokens on GPU so the matmuls stay large) unless the caller passes
chunk_tokens. Backward recomputes each chunk's logits, turns them into dz = g * (onehot(label) -
softmax(z)) for any per-token upstream gradient g, and does dH = dz @ W and dW += dz.T @ h_c. One
op therefore serves SFT cross-entropy (kernels/cross_entropy.py folds its known gradient into the
forward instead) and DPO's per-sequence sums (`sequence_logps`).

Numerical contract
- Logits are fp32 for every input dtype (fp64 if an input is fp64): they are never rounded to
  bf16/fp16, which would cost up to ~0.06 nats per token at |z| ~ 20, summed over a DPO response.
  Half inputs (bf16/fp16) of one dtype go through the matmul as they are, with fp32 accumulation
  and fp32 output (torch.mm(out_dtype=torch.float32), probed once per device type and dtype: CUDA
  on recent torch). Where that is missing (CPU, older torch, mixed input dtypes) the hidden chunk
  and one block of at most C * V / (4 H) weight rows at a time are upcast before the matmul: no
  temporary ever holds a full (V, H) copy of the weight, in any dtype.
- The softmax statistics are fp32: running max m and s' = sum_j exp(z_j - m) with ONE arg-max
  term left out, so logsumexp = m + log1p(s') and log p = (z_label - m) - log1p(s'). Leaving the
  1 out keeps full relative precision when p(label) ~ 1 (log p ~ -1e-6); for the same reason the
  label's gradient term 1 - p is computed as -expm1(log p). Triton has no libdevice in the
  interpreter, so log1p/expm1 use Kahan's tricks (log(u) * x / (u - 1) with u = 1 + x).
- dz is computed in fp32 from the fp32 logits. With fp32-output matmuls and half inputs it is
  then written once in the input dtype into a second (C, V) buffer, and dH = dz @ W and
  dW += dz.T @ h_c run on half operands (like eager autograd through half logits), dW with fp32
  output; otherwise dz stays fp32 in the logits buffer and the backward matmuls upcast as above.
- Output log-probs are fp32 (N,). Saved for backward: hidden, weight, labels and two fp32 (N,)
  vectors, the log-probs and logsumexp, never logits (the label's 1 - p comes from the saved
  log p, since z_label - lse in fp32 would round it away when p ~ 1). dW accumulates in an fp32
  (V, H) buffer (allocated once per backward) and is cast to the weight's dtype at the end; dH is
  written per chunk in the hidden's dtype.
- Memory per call: the fp32 logits buffer C * V (C from CHUNK_BUDGET_BYTES, which also counts the
  half dz buffer when there is one), plus on the upcast path one weight block of <= C * V / 4.
- Row offsets are int64 (N * V may pass 2^31). Ignored labels give log p = 0 and zero gradient,
  also when a chunk or the whole batch is ignored (no NaN).
"""
from __future__ import annotations

import dataclasses

import torch

from ie_engine.kernels import _dispatch
from ie_engine.kernels._chunk_matmul import HALF, _grad_hidden_, _grad_weight_, _has_fp32_out_mm, _logits_
from ie_engine.kernels._dispatch import tl, triton

BLOCK_V = 4096  # vocab block of the Triton row kernels (smaller when V is)
CHUNK_BUDGET_BYTES = {"cuda": 128 * 2**20, "cpu": 128 * 2**20}  # logits (+ dz) buffers per chunk
MIN_CHUNK = {"cuda": 2048, "cpu": 64}  # tokens: keeps the chunk matmuls large


@dataclasses.dataclass(frozen=True)
class _Options:
    """How one call runs; chosen by the public function, passed to forward and backward alike."""
    ignore_index: int = -100
    triton: bool = False  # Triton row kernels (else the PyTorch chunk functions below)
    chunk_tokens: int | None = None  # tokens per chunk; None: from the memory budget
    logits_dtype: torch.dtype | None = None  # None: the contract (fp32); benchmarks pass bf16 to time the old one


# ----------------------------------------------------------------------------- references

def _logits_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """fp32 for half or fp32 inputs, fp64 if either is fp64: logits are never in a half type."""
    return torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)


def fused_linear_logprob_ref(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                             ignore_index: int = -100) -> torch.Tensor:
    """The spec, unchunked: fp32 (or wider) logits -> log_softmax -> gather. Holds (N, V) and,
    for half inputs, fp32 copies of hidden and weight."""
    dtype = _logits_dtype(hidden, weight)
    logits = hidden.to(dtype) @ weight.to(dtype).T  # (N, V)
    ignored = labels == ignore_index
    logp = logits.log_softmax(-1).gather(1, labels.masked_fill(ignored, 0)[:, None])[:, 0]
    return logp.masked_fill(ignored, 0.0)


def _logprob_chunk_torch(z, labels, grad):
    """CPU reference of one chunk. z (C, V) fp32 logits, overwritten; labels (C,) already >= 0.

    Returns fp32 (logp, lse), each (C,). If grad (C,) is given, z ends as dz = g * (onehot - p).
    """
    m, arg = z.max(dim=1, keepdim=True)  # (C, 1)
    z_label = z.gather(1, labels[:, None])
    z.sub_(m).exp_()  # e = exp(z - m), in place
    z.scatter_(1, arg, 0.0)  # leave one arg-max term (exactly 1) out of the sum
    log_sum = torch.log1p(z.sum(1, keepdim=True))
    logp = (z_label - m) - log_sum
    if grad is not None:
        g = grad[:, None]
        z.scatter_(1, arg, 1.0).mul_(-g * torch.exp(-log_sum))  # -g * p
        z.scatter_(1, labels[:, None], (-g * torch.expm1(logp)).to(z.dtype))  # g * (1 - p_label)
    return logp[:, 0], (m + log_sum)[:, 0]


def _grad_chunk_torch(z, labels, logp, lse, grad):
    """CPU reference of the backward of one chunk: recomputed logits z (C, V) -> dz, in place.
    The label's term uses the saved log p: z_label - lse in fp32 would lose it when p ~ 1."""
    g = grad[:, None]
    z.sub_(lse[:, None]).exp_().mul_(-g)  # -g * p
    z.scatter_(1, labels[:, None], (-g * torch.expm1(logp[:, None])).to(z.dtype))


# ----------------------------------------------------------------------------- Triton

@triton.jit
def _log1p(x):
    u = 1.0 + x
    one = u == 1.0  # (the guards keep 0/0 out of the branch tl.where drops)
    return tl.where(one, x, tl.log(u) * (x / tl.where(one, 1.0, u - 1.0)))


@triton.jit
def _expm1(x):
    u = tl.exp(x)
    one = u == 1.0
    small = tl.where(one, x, (u - 1.0) * (x / tl.where(one, 1.0, tl.log(u))))
    return tl.where(tl.abs(x) < 0.5, small, u - 1.0)


@triton.jit
def _flp_fwd_kernel(z_ptr, stride_z, labels_ptr, logp_ptr, lse_ptr, V, ignore_index,
                    BLOCK_V: tl.constexpr):
    """One program per row: online (max, sum-without-one-argmax) over vocab blocks."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    label = tl.load(labels_ptr + row)
    m = float("-inf")
    s = 0.0  # sum_j exp(z_j - m), one arg-max term (= 1) left out
    z_label = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(z_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_b = tl.max(z, 0)
        is_max = z == m_b
        t = tl.sum(tl.where(is_max, 0.0, tl.exp(z - m_b)), 0) + (tl.sum(is_max.to(tl.float32), 0) - 1.0)
        z_label += tl.sum(tl.where(cols == label, z, 0.0), 0)
        m_new = tl.maximum(m, m_b)
        # a new max demotes the old arg-max term (the implicit 1) into the sum; else the block's
        # own implicit 1 joins it
        s = tl.where(m_b > m, (1.0 + s) * tl.exp(m - m_new) + t, s + (1.0 + t) * tl.exp(m_b - m_new))
        m = m_new
    log_sum = _log1p(s)
    logp = tl.where(label == ignore_index, 0.0, (z_label - m) - log_sum)
    tl.store(logp_ptr + row, logp)
    tl.store(lse_ptr + row, m + log_sum)


@triton.jit
def _flp_bwd_kernel(z_ptr, stride_z, dz_ptr, stride_dz, labels_ptr, logp_ptr, lse_ptr, grad_ptr, V,
                    ignore_index, BLOCK_V: tl.constexpr):
    """One program per row: logits -> dz = g * (onehot(label) - exp(z - lse)), written to dz_ptr
    in its dtype (the logits buffer itself, or a half buffer for half backward matmuls)."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    dz_row = dz_ptr + row * stride_dz
    label = tl.load(labels_ptr + row)
    ignored = label == ignore_index
    label = tl.where(ignored, 0, label)
    g = tl.where(ignored, 0.0, tl.load(grad_ptr + row).to(tl.float32))
    lse = tl.load(lse_ptr + row)
    d_label = -g * _expm1(tl.load(logp_ptr + row))  # g * (1 - p_label), precise when p ~ 1
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        z = tl.load(z_row + cols, mask=mask, other=0.0).to(tl.float32)
        dz = tl.where(cols == label, d_label, -g * tl.exp(z - lse))
        tl.store(dz_row + cols, dz.to(dz_ptr.dtype.element_ty), mask=mask)


def _row_launch_settings(V: int) -> tuple[int, int]:
    """(vocab block, num_warps) of the row kernels."""
    block = min(BLOCK_V, triton.next_power_of_2(V))
    return block, 8 if block >= 2048 else 4


def _logprob_chunk_triton(z, dz, labels, ignore_index, grad):
    """Triton twin of _logprob_chunk_torch; with grad, dz (z itself or a half buffer) gets dz."""
    C, V = z.shape
    block, warps = _row_launch_settings(V)
    logp = torch.empty(C, dtype=torch.float32, device=z.device)
    lse = torch.empty(C, dtype=torch.float32, device=z.device)
    _flp_fwd_kernel[(C,)](z, z.stride(0), labels, logp, lse, V, ignore_index, BLOCK_V=block, num_warps=warps)
    if grad is not None:
        _grad_chunk_triton(z, dz, labels, logp, lse, grad, ignore_index)
    return logp, lse


def _grad_chunk_triton(z, dz, labels, logp, lse, grad, ignore_index):
    C, V = z.shape
    block, warps = _row_launch_settings(V)
    _flp_bwd_kernel[(C,)](z, z.stride(0), dz, dz.stride(0), labels, logp, lse, grad, V, ignore_index,
                          BLOCK_V=block, num_warps=warps)


# ----------------------------------------------------------------------------- chunk loop

def _chunk_size(n: int, v: int, bytes_per_logit: int, device: torch.device, chunk_tokens: int | None = None) -> int:
    """Tokens per chunk: chunk_tokens if given, else what fits the budget (in whole 64-row tiles)."""
    if chunk_tokens is not None:
        return max(1, min(chunk_tokens, n))
    kind = "cuda" if device.type == "cuda" else "cpu"
    c = max(CHUNK_BUDGET_BYTES[kind] // (v * bytes_per_logit) // 64 * 64, MIN_CHUNK[kind])
    return max(1, min(c, n))


def _chunk_loop(hidden, weight, labels, opts: _Options, grad=None, saved=None, need_dh=True, need_dw=True):
    """Run all token chunks. Forward (saved is None): returns (logp, lse, dH, dW), with dH, dW
    only when grad is given (gradient folded into the forward). Backward (saved = the forward's
    (logp, lse)): recomputes each chunk's logits and returns (logp, lse, dH, dW) for the
    per-token upstream gradient grad."""
    N, H = hidden.shape
    V = weight.shape[0]
    device = hidden.device
    zdtype = opts.logits_dtype or _logits_dtype(hidden, weight)
    # half backward matmuls where the forward one writes fp32 from half operands (see docstring)
    half_dz = (grad is not None and hidden.dtype == weight.dtype and zdtype == torch.float32
               and weight.dtype in HALF and _has_fp32_out_mm(device.type, weight.dtype))
    bytes_per_logit = zdtype.itemsize + (weight.dtype.itemsize if half_dz else 0)
    C = _chunk_size(N, V, bytes_per_logit, device, opts.chunk_tokens)
    rows = max(1, min(V, C * V // (4 * H)))  # weight rows per upcast block: <= 1/4 of the logits
    buf = torch.empty(C, V, dtype=zdtype, device=device)  # the only logits ever alive
    dz_buf = torch.empty(C, V, dtype=weight.dtype, device=device) if half_dz else None
    labels = labels.contiguous()  # the Triton kernels index it as a flat int64 array
    ignored = labels == opts.ignore_index
    safe_labels = labels.masked_fill(ignored, 0)  # gather/scatter index for the torch path
    if grad is not None:
        grad = grad.float().masked_fill(ignored, 0.0).contiguous()
    forward = saved is None
    if forward:
        logp = torch.empty(N, dtype=torch.float32, device=device)
        lse = torch.empty(N, dtype=torch.float32, device=device)
    else:
        logp, lse = saved
    dh = torch.empty_like(hidden) if grad is not None and need_dh else None
    dw_dtype = torch.promote_types(weight.dtype, torch.float32)
    dw = torch.zeros(V, H, dtype=dw_dtype, device=device) if grad is not None and need_dw else None
    for s in range(0, N, C):
        e = min(s + C, N)
        h_c = hidden[s:e]  # (c, H)
        z = buf[: e - s]  # (c, V)
        dz = z if dz_buf is None else dz_buf[: e - s]
        _logits_(z, h_c, weight, rows)
        g_c = grad[s:e] if grad is not None else None
        if forward and opts.triton:
            logp[s:e], lse[s:e] = _logprob_chunk_triton(z, dz, labels[s:e], opts.ignore_index, g_c)
        elif forward:
            logp[s:e], lse[s:e] = _logprob_chunk_torch(z, safe_labels[s:e], g_c)
        elif opts.triton:
            _grad_chunk_triton(z, dz, labels[s:e], logp[s:e], lse[s:e], g_c, opts.ignore_index)
        else:
            _grad_chunk_torch(z, safe_labels[s:e], logp[s:e], lse[s:e], g_c)
        if grad is None:
            continue
        if dz is not z and not opts.triton:
            dz.copy_(z)  # the torch functions leave dz in the logits buffer
        if dh is not None:
            _grad_hidden_(dh[s:e], dz, weight, rows)
        if dw is not None:
            _grad_weight_(dw, dz, h_c, rows)
    if forward:
        logp.masked_fill_(ignored, 0.0)
    return logp, lse, dh, None if dw is None else dw.to(weight.dtype)


# ----------------------------------------------------------------------------- autograd

class _FusedLinearLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, opts):
        logp, lse, _, _ = _chunk_loop(hidden, weight, labels, opts)
        ctx.save_for_backward(hidden, weight, labels, logp, lse)
        ctx.opts = opts
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        hidden, weight, labels, logp, lse = ctx.saved_tensors
        _, _, dh, dw = _chunk_loop(hidden, weight, labels, ctx.opts, grad=grad_logp, saved=(logp, lse),
                                   need_dh=ctx.needs_input_grad[0], need_dw=ctx.needs_input_grad[1])
        return dh, dw, None, None


def fused_linear_logprob(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int = -100, *, chunk_tokens: int | None = None) -> torch.Tensor:
    """Per-token log p(label) of z = hidden @ weight.T: hidden (N, H), weight (V, H), labels (N,)
    int64 -> (N,) float32, 0 where labels == ignore_index. Differentiable in hidden and weight
    for any per-token upstream gradient; never holds the (N, V) logits. chunk_tokens: tokens per
    chunk (default: from the memory budget). Triton on CUDA, else the chunked PyTorch path."""
    opts = _Options(ignore_index, _dispatch.use_triton(hidden), chunk_tokens)
    return _FusedLinearLogprob.apply(hidden, weight, labels, opts)


def sequence_logps(token_logps: torch.Tensor, doc_ids: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """Sum per-token log-probs of packed rows by document: token_logps (N,), doc_ids (N,) int64
    with -1 for padding -> (num_seqs,) float32. Differentiable (index_add); no host sync."""
    pad = doc_ids < 0
    vals = token_logps.float().masked_fill(pad, 0.0)  # padding adds 0 to sequence 0
    out = torch.zeros(num_seqs, dtype=torch.float32, device=token_logps.device)
    return out.index_add(0, doc_ids.masked_fill(pad, 0), vals)
