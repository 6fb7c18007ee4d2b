"""Fused DPO loss: per-pair preference loss and rewards from per-sequence log-probs, one kernel.

    logits  = (pi_c - pi_r) - (ref_c - ref_r)                    # (B,)
    sigmoid = -logsigmoid(beta*logits)*(1-ls) - logsigmoid(-beta*logits)*ls
              DPO, Rafailov et al. 2023 (arXiv:2305.18290); ls > 0 is conservative DPO (cDPO,
              Mitchell 2023, "A note on DPO with noisy preferences")
    ipo     = (logits - 1/(2*beta))**2           IPO, Azar et al. 2023 (arXiv:2310.12036), Eq. 17
    hinge   = relu(1 - beta*logits)              SLiC, Zhao et al. 2023 (arXiv:2305.10425)
    robust  = (-logsigmoid(beta*logits)*(1-ls) + logsigmoid(-beta*logits)*ls) / (1 - 2*ls)
              robust DPO, Chowdhury et al. 2024 (arXiv:2403.00409), needs 0 <= ls < 0.5
    rewards = beta * (pi - ref), detached         (as TRL's DPOTrainer reports them)

These are TRL's DPOTrainer formulas term for term (tests/kernels/test_dpo_loss.py checks against
TRL's own code when it is installed). TRL averages the log-probs per completion token before IPO;
that is the caller's choice of inputs here: pass per-token means for TRL's IPO.

Numerical contract (identical for the reference and the Triton kernels):
- Inputs are four (B,) float tensors (any float dtype, any stride); every one is upcast to fp32
  on load and all math is fp32. Outputs (losses, chosen_rewards, rejected_rewards) are (B,) fp32.
- logsigmoid is the stable min(x, 0) - log1p(exp(-|x|)) and sigmoid is formed from exp(-|x|),
  so |beta*logits| of 100 or more gives finite losses and gradients with the right limits.
- Saved for backward: the four inputs as given (no copies); backward recomputes logits and
  writes d loss / d logits analytically per loss type, times the upstream gradient, in fp32, and
  casts to each input's dtype. Gradients reach all four inputs (d/d pi_c = d/d ref_r = g,
  d/d pi_r = d/d ref_c = -g); ref inputs normally do not require grad and then get none.
- hinge at exactly beta*logits == 1 has gradient 0 (as torch.relu's). Nothing is written in place.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ie_engine.kernels import _dispatch
from ie_engine.kernels._dispatch import tl, triton

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def _check_args(tensors: tuple[torch.Tensor, ...], beta: float, loss_type: str, label_smoothing: float) -> None:
    names = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    for name, t in zip(names, tensors):
        if t.dim() != 1 or not t.is_floating_point():
            raise ValueError(f"dpo_loss: {name} must be a 1-D float tensor (B,), got {tuple(t.shape)} {t.dtype}")
        if t.shape != tensors[0].shape or t.device != tensors[0].device:
            raise ValueError(f"dpo_loss: {name} is {tuple(t.shape)} on {t.device}, but policy_chosen_logps is "
                             f"{tuple(tensors[0].shape)} on {tensors[0].device}; all four must match")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo_loss: unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"dpo_loss: beta must be a finite number > 0, got {beta}")
    if loss_type == "sigmoid" and not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"dpo_loss: label_smoothing for 'sigmoid' (cDPO) is a flip probability in [0, 1], "
                         f"got {label_smoothing}")
    if loss_type == "robust" and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_loss: label_smoothing for 'robust' must lie in [0, 0.5) (the loss divides by "
                         f"1 - 2*label_smoothing), got {label_smoothing}")
    if loss_type in ("ipo", "hinge") and label_smoothing != 0.0:
        raise ValueError(f"dpo_loss: label_smoothing={label_smoothing} has no meaning for loss_type={loss_type!r}; "
                         f"use 0.0 (only 'sigmoid' and 'robust' use it)")


# ----------------------------------------------------------------------------- reference

def dpo_loss_ref(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The spec and the CPU path: the formulas above in fp32 with plain autograd."""
    _check_args((policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps),
                beta, loss_type, label_smoothing)
    pc, pr = policy_chosen_logps.float(), policy_rejected_logps.float()
    rc, rr = ref_chosen_logps.float(), ref_rejected_logps.float()
    logits = (pc - pr) - (rc - rr)  # (B,)
    ls = label_smoothing
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:  # robust
        losses = (-F.logsigmoid(beta * logits) * (1 - ls) + F.logsigmoid(-beta * logits) * ls) / (1 - 2 * ls)
    chosen_rewards = beta * (pc - rc).detach()
    rejected_rewards = beta * (pr - rr).detach()
    return losses, chosen_rewards, rejected_rewards


# ----------------------------------------------------------------------------- Triton kernels

_SIGMOID, _IPO, _HINGE, _ROBUST = 0, 1, 2, 3  # LOSS constexpr codes, in LOSS_TYPES order


@triton.jit
def _log1p_exp_neg_abs(x):
    # log1p(exp(-|x|)) without libdevice (it raises in the interpreter). Goldberg's trick makes
    # log(1 + e) exact-to-rounding for tiny e: log(u) * e / (u - 1) with u = fl(1 + e).
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * (e / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def _sigmoid(x):
    e = tl.exp(-tl.abs(x))  # in (0, 1]: never overflows
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _load_logits(pc_ptr, pr_ptr, rc_ptr, rr_ptr, s_pc, s_pr, s_rc, s_rr, offs, mask):
    pc = tl.load(pc_ptr + offs * s_pc, mask=mask, other=0.0).to(tl.float32)
    pr = tl.load(pr_ptr + offs * s_pr, mask=mask, other=0.0).to(tl.float32)
    rc = tl.load(rc_ptr + offs * s_rc, mask=mask, other=0.0).to(tl.float32)
    rr = tl.load(rr_ptr + offs * s_rr, mask=mask, other=0.0).to(tl.float32)
    return pc, pr, rc, rr, (pc - pr) - (rc - rr)


@triton.jit
def _dpo_loss_fwd_kernel(
    pc_ptr, pr_ptr, rc_ptr, rr_ptr, s_pc, s_pr, s_rc, s_rr,
    loss_ptr, chosen_rw_ptr, rejected_rw_ptr,
    B, beta, ls,
    LOSS: tl.constexpr, BLOCK: tl.constexpr,
):
    # One program handles BLOCK pairs; B is small (a batch of pairs), so int32 offsets suffice.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < B
    pc, pr, rc, rr, logits = _load_logits(pc_ptr, pr_ptr, rc_ptr, rr_ptr, s_pc, s_pr, s_rc, s_rr, offs, mask)
    x = beta * logits
    if LOSS == 1:  # ipo
        d = logits - 0.5 / beta
        loss = d * d
    elif LOSS == 2:  # hinge
        loss = tl.maximum(1.0 - x, 0.0)
    else:
        sp = _log1p_exp_neg_abs(x)
        logsig_pos = tl.minimum(x, 0.0) - sp  # logsigmoid(x)
        logsig_neg = tl.minimum(-x, 0.0) - sp  # logsigmoid(-x)
        if LOSS == 0:  # sigmoid / cDPO
            loss = -logsig_pos * (1.0 - ls) - logsig_neg * ls
        else:  # robust
            loss = (-logsig_pos * (1.0 - ls) + logsig_neg * ls) / (1.0 - 2.0 * ls)
    tl.store(loss_ptr + offs, loss, mask=mask)
    tl.store(chosen_rw_ptr + offs, beta * (pc - rc), mask=mask)
    tl.store(rejected_rw_ptr + offs, beta * (pr - rr), mask=mask)


@triton.jit
def _dpo_loss_bwd_kernel(
    pc_ptr, pr_ptr, rc_ptr, rr_ptr, s_pc, s_pr, s_rc, s_rr,
    grad_loss_ptr, s_g,
    grad_pc_ptr, grad_pr_ptr,
    B, beta, ls,
    LOSS: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < B
    pc, pr, rc, rr, logits = _load_logits(pc_ptr, pr_ptr, rc_ptr, rr_ptr, s_pc, s_pr, s_rc, s_rr, offs, mask)
    # s_g may be 0: losses.mean().backward() hands us an expanded scalar, read without a copy.
    g = tl.load(grad_loss_ptr + offs * s_g, mask=mask, other=0.0).to(tl.float32)
    x = beta * logits
    # dl = d loss / d logits
    if LOSS == 1:  # ipo
        dl = 2.0 * (logits - 0.5 / beta)
    elif LOSS == 2:  # hinge: d relu(1 - x) / dx = -1 where 1 - x > 0, else 0 (torch.relu's convention)
        dl = tl.where(1.0 - x > 0.0, -beta, 0.0)
    else:
        # d logsigmoid(x)/dx = sigmoid(-x);  d logsigmoid(-x)/dx = -sigmoid(x)
        s_pos = _sigmoid(x)
        s_neg = _sigmoid(-x)
        if LOSS == 0:
            dl = beta * (-(1.0 - ls) * s_neg + ls * s_pos)
        else:
            dl = beta * (-(1.0 - ls) * s_neg - ls * s_pos) / (1.0 - 2.0 * ls)
    dl = g * dl
    tl.store(grad_pc_ptr + offs, dl.to(grad_pc_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_pr_ptr + offs, (-dl).to(grad_pr_ptr.dtype.element_ty), mask=mask)


def _block(n: int) -> int:
    # A plain heuristic (autotune raises in the interpreter): the op is a few flops per 16 bytes,
    # so big blocks just amortize launch; small batches get small blocks (less interpreter work).
    return max(16, min(1024, triton.next_power_of_2(n)))


# ----------------------------------------------------------------------------- autograd

class _DPOLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pc, pr, rc, rr, beta, loss_type, label_smoothing):
        n = pc.shape[0]
        losses = torch.empty(n, device=pc.device, dtype=torch.float32)
        chosen_rw = torch.empty_like(losses)
        rejected_rw = torch.empty_like(losses)
        code = LOSS_TYPES.index(loss_type)
        if n > 0:
            block = _block(n)
            _dpo_loss_fwd_kernel[(triton.cdiv(n, block),)](
                pc, pr, rc, rr, pc.stride(0), pr.stride(0), rc.stride(0), rr.stride(0),
                losses, chosen_rw, rejected_rw, n, float(beta), float(label_smoothing),
                LOSS=code, BLOCK=block, num_warps=4,
            )
        ctx.save_for_backward(pc, pr, rc, rr)
        ctx.beta, ctx.ls, ctx.code = float(beta), float(label_smoothing), code
        ctx.mark_non_differentiable(chosen_rw, rejected_rw)
        return losses, chosen_rw, rejected_rw

    @staticmethod
    def backward(ctx, grad_losses, _grad_chosen_rw, _grad_rejected_rw):
        pc, pr, rc, rr = ctx.saved_tensors
        n = pc.shape[0]
        if grad_losses is None:
            grad_losses = torch.zeros(n, device=pc.device, dtype=torch.float32)
        grad_pc = torch.empty_like(pc, memory_format=torch.contiguous_format)
        grad_pr = torch.empty_like(pr, memory_format=torch.contiguous_format)
        if n > 0:
            block = _block(n)
            _dpo_loss_bwd_kernel[(triton.cdiv(n, block),)](
                pc, pr, rc, rr, pc.stride(0), pr.stride(0), rc.stride(0), rr.stride(0),
                grad_losses, grad_losses.stride(0), grad_pc, grad_pr, n, ctx.beta, ctx.ls,
                LOSS=ctx.code, BLOCK=block, num_warps=4,
            )
        need = ctx.needs_input_grad
        # logits = (pc - pr) - (rc - rr): d/d rc = -d/d pc, d/d rr = -d/d pr.
        grad_rc = (-grad_pc).to(rc.dtype) if need[2] else None
        grad_rr = (-grad_pr).to(rr.dtype) if need[3] else None
        return (grad_pc if need[0] else None, grad_pr if need[1] else None, grad_rc, grad_rr, None, None, None)


# ----------------------------------------------------------------------------- public

def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO-family losses and rewards from per-sequence summed log-probs, each (B,).

    Returns (losses, chosen_rewards, rejected_rewards), all (B,) fp32; the rewards are detached.
    Reduce the losses yourself (usually .mean()); any upstream gradient per element works.
    """
    args = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    _check_args(args, beta, loss_type, label_smoothing)
    if not _dispatch.use_triton(policy_chosen_logps):
        return dpo_loss_ref(*args, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    return _DPOLossFunction.apply(*args, beta, loss_type, label_smoothing)

