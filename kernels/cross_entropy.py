"""Fused lm-head + cross-entropy for SFT, with its gradient folded into the forward.

    loss = -(sum of log p(label) over valid tokens) / num_valid_tokens,   z = hidden @ weight.T

num_valid_tokens is the valid-token count of the WHOLE optimizer step (all micro-batches and
ranks), passed in by the trainer, so summing this loss over micro-batches and ranks gives the
step's token mean; the default (this call's own count) gives a per-call mean.

The per-token upstream gradient of this loss is known in the forward (-1 / num_valid_tokens for
valid tokens, 0 for ignored), so the forward runs the chunk loop of fused_linear_logprob.py with
it: per token chunk, logits (C, V) -> log-probs and, in the same buffer, dz -> dH = dz @ W and
dW += dz.T @ h_c. That is 3 matmuls in all, like eager, and no recompute. Backward only scales
the saved dH, dW by the incoming scalar gradient.

Numerical contract: as fused_linear_logprob (fp32 logits for every input dtype, fp32 softmax
statistics, fp32 dW accumulator cast to the weight's dtype at the end of the forward, dH in the
hidden's dtype); the reference also computes its logits in fp32 (or wider). Saved for backward:
dH (N, H) and dW (V, H) in the input dtypes, already divided by num_valid_tokens, so a backward
with the usual grad 1.0 is exact; backward scales them in place and returns them (so a second
backward through the same forward raises). No logits are saved. An all-ignored call gives loss 0 and
zero gradients (the count is clamped to >= 1).
"""
from __future__ import annotations

import torch

from ie_engine.kernels import _dispatch
from ie_engine.kernels.fused_linear_logprob import _chunk_loop, _logits_dtype, _Options


def fused_linear_cross_entropy_ref(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                   ignore_index: int = -100, num_valid_tokens=None) -> torch.Tensor:
    """The spec, unchunked: cross_entropy(sum) of the fp32 (or wider) (N, V) logits / num_valid_tokens."""
    dtype = _logits_dtype(hidden, weight)
    logits = hidden.to(dtype) @ weight.to(dtype).T  # (N, V)
    total = torch.nn.functional.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / _num_valid(labels, ignore_index, num_valid_tokens, logits.dtype)


def _num_valid(labels, ignore_index, num_valid_tokens, dtype=torch.float32) -> torch.Tensor:
    if num_valid_tokens is None:
        num_valid_tokens = (labels != ignore_index).sum()
    n = torch.as_tensor(num_valid_tokens, device=labels.device)
    return n.to(dtype).clamp(min=1)  # all ignored -> loss 0, not 0/0


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, num_valid, need_dh, need_dw, opts):
        grad = None
        if need_dh or need_dw:  # d loss / d logp per token, folded into the forward
            grad = torch.full(labels.shape, -1.0, device=labels.device) / num_valid
        logp, _, dh, dw = _chunk_loop(hidden, weight, labels, opts, grad=grad, need_dh=need_dh, need_dw=need_dw)
        ctx.save_for_backward(dh, dw)
        ctx.done = False
        return -logp.sum() / num_valid

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.done:
            raise RuntimeError("fused_linear_cross_entropy supports one backward per forward")
        ctx.done = True
        dh, dw = ctx.saved_tensors
        # scaled in place: a copy of dW would be a second (V, H) tensor at the backward's peak
        for t in (dh, dw):
            if t is not None:
                t.mul_(grad_loss.to(t.dtype))
        return dh, dw, None, None, None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               ignore_index: int = -100, num_valid_tokens=None, *,
                               chunk_tokens: int | None = None) -> torch.Tensor:
    """Scalar SFT loss -(sum of log p over valid tokens) / num_valid_tokens for hidden (N, H),
    weight (V, H), labels (N,) int64. num_valid_tokens: int or 0-dim tensor, the whole step's
    valid-token count; None = this call's count. Gradients are computed in the forward when
    grad mode is on and an input requires grad. chunk_tokens: tokens per chunk (default: from
    the memory budget). Triton on CUDA, else the chunked PyTorch path."""
    grad_on = torch.is_grad_enabled()
    need_dh = grad_on and hidden.requires_grad
    need_dw = grad_on and weight.requires_grad
    num_valid = _num_valid(labels, ignore_index, num_valid_tokens)
    opts = _Options(ignore_index, _dispatch.use_triton(hidden), chunk_tokens)
    return _FusedLinearCrossEntropy.apply(hidden, weight, labels, num_valid, need_dh, need_dw, opts)
