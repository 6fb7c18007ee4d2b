"""kernels/dpo_loss.py against its formulas in float64, TRL's DPOTrainer, and its own reference.

Kernel cases run on the paths of tests/kernels/conftest.py (the interpreter on CPU, compiled on
CUDA; cpu-torch is the PyTorch reference, which CPU tensors take).
"""
import types

import pytest
import torch
import torch.nn.functional as F

import ie_engine.kernels.dpo_loss as dpo_mod
from ie_engine.kernels.dpo_loss import dpo_loss, dpo_loss_ref

KERNELS = ("_dpo_loss_fwd_kernel", "_dpo_loss_bwd_kernel")
CASES = [("sigmoid", 0.0), ("sigmoid", 0.1), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.0), ("robust", 0.2)]


def formula64(pc, pr, rc, rr, beta, loss_type, ls):
    """The published formulas (see the kernel's docstring) in float64: the ground truth here."""
    pc, pr, rc, rr = (t.double() for t in (pc, pr, rc, rr))
    logits = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:
        losses = (-F.logsigmoid(beta * logits) * (1 - ls) + F.logsigmoid(-beta * logits) * ls) / (1 - 2 * ls)
    return losses, beta * (pc - rc).detach(), beta * (pr - rr).detach()


def make_inputs(B, dtype=torch.float32, device="cpu", gen=None):
    """Summed log-probs of realistic size (a few hundred nats), policy near the reference."""
    rc = -torch.rand(B, generator=gen, dtype=torch.float64) * 300 - 1
    rr = -torch.rand(B, generator=gen, dtype=torch.float64) * 300 - 1
    pc = rc + torch.randn(B, generator=gen, dtype=torch.float64) * 15
    pr = rr + torch.randn(B, generator=gen, dtype=torch.float64) * 15
    return [t.to(dtype=dtype, device=device) for t in (pc, pr, rc, rr)]


def logits_err(inputs):
    """Bound on the fp32 rounding of (pc - pr) - (rc - rr): the inputs' own precision, not the kernel's."""
    return 4 * torch.finfo(torch.float32).eps * sum(t.double().abs() for t in inputs)


def check_against_formula(inputs, beta, loss_type, ls, ref_grad, gen):
    B = inputs[0].shape[0]
    device = inputs[0].device
    leaves = [t.clone().requires_grad_(i < 2 or ref_grad) for i, t in enumerate(inputs)]
    leaves64 = [t.detach().double().requires_grad_(True) for t in inputs]
    losses, chosen_rw, rejected_rw = dpo_loss(*leaves, beta=beta, loss_type=loss_type, label_smoothing=ls)
    want, want_c, want_r = formula64(*leaves64, beta, loss_type, ls)
    assert losses.dtype == chosen_rw.dtype == rejected_rw.dtype == torch.float32
    assert losses.shape == chosen_rw.shape == rejected_rw.shape == (B,)
    assert not chosen_rw.requires_grad and not rejected_rw.requires_grad

    # Error budget: fp32 rounding of logits times |d loss / d logits|, plus fp32 on the result.
    g = torch.randn(B, generator=gen, dtype=torch.float64).to(device)
    (dl,) = torch.autograd.grad(want, leaves64[0], torch.ones_like(want), retain_graph=True)
    err = logits_err(inputs)
    tol = err * dl.abs() + 1e-6 * want.abs() + 1e-6
    assert ((losses.double() - want.detach()).abs() <= tol).all(), (losses, want)
    torch.testing.assert_close(chosen_rw.double(), want_c, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rejected_rw.double(), want_r, rtol=1e-6, atol=1e-6)

    got = torch.autograd.grad(losses, [t for t in leaves if t.requires_grad], g.float())
    want_g = torch.autograd.grad(want, leaves64, g)
    # d^2 loss / d logits^2 is at most 2 (ipo), beta^2/4 (sigmoid-type), 0 (hinge, off the kink).
    gtol = g.abs() * (2 * err + 1e-6 * dl.abs()) + 1e-7
    for got_i, want_i in zip(got, want_g):
        assert got_i.dtype == inputs[0].dtype
        assert ((got_i.double() - want_i).abs() <= gtol).all(), (got_i, want_i)
    assert len(got) == (4 if ref_grad else 2)


@pytest.mark.parametrize("loss_type,ls", CASES)
@pytest.mark.parametrize("B", [1, 7, 1001])
@pytest.mark.parametrize("ref_grad", [False, True])
def test_triton_matches_float64_formula(path, loss_type, ls, B, ref_grad):
    gen = torch.Generator().manual_seed(B * 31 + len(loss_type))
    beta = 0.1 if loss_type != "ipo" else 0.05
    check_against_formula(make_inputs(B, device=path.device, gen=gen), beta, loss_type, ls, ref_grad, gen)
    path.assert_ran(*KERNELS)


@pytest.mark.parametrize("loss_type,ls", CASES)
def test_reference_path_matches_float64_formula(loss_type, ls, monkeypatch):
    def no_triton(*args):
        raise AssertionError("CPU tensors must take the reference path")

    monkeypatch.setattr(dpo_mod._DPOLossFunction, "apply", no_triton)
    gen = torch.Generator().manual_seed(7)
    check_against_formula(make_inputs(1001, gen=gen), 0.1, loss_type, ls, True, gen)


@pytest.mark.parametrize("loss_type,ls", CASES)
def test_mean_reduction_backward(path, loss_type, ls):
    # losses.mean().backward() hands backward a stride-0 (expanded) gradient.
    pc, pr, rc, rr = make_inputs(33, device=path.device)
    a = [pc.clone().requires_grad_(), pr.clone().requires_grad_()]
    b = [pc.clone().requires_grad_(), pr.clone().requires_grad_()]
    dpo_loss(*a, rc, rr, beta=0.2, loss_type=loss_type, label_smoothing=ls)[0].mean().backward()
    dpo_loss_ref(*b, rc, rr, beta=0.2, loss_type=loss_type, label_smoothing=ls)[0].mean().backward()
    path.assert_ran(*KERNELS)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss_type,ls", [("sigmoid", 0.1), ("ipo", 0.0), ("robust", 0.2)])
def test_bf16_inputs_are_upcast(path, loss_type, ls):
    inputs = make_inputs(17, dtype=torch.bfloat16, device=path.device)
    pc, pr = (t.clone().requires_grad_() for t in inputs[:2])
    losses, chosen_rw, _ = dpo_loss(pc, pr, *inputs[2:], beta=0.1, loss_type=loss_type, label_smoothing=ls)
    # The bf16 values are exact in fp32, so fp32 math on them matches float64 on them closely.
    want, want_c, _ = formula64(*inputs, 0.1, loss_type, ls)
    assert losses.dtype == torch.float32
    torch.testing.assert_close(losses.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chosen_rw.double(), want_c, rtol=1e-6, atol=1e-6)
    losses.sum().backward()
    leaves64 = [t.double().requires_grad_() for t in inputs[:2]]
    formula64(*leaves64, *inputs[2:], 0.1, loss_type, ls)[0].sum().backward()
    path.assert_ran(*KERNELS)
    assert pc.grad.dtype == torch.bfloat16
    torch.testing.assert_close(pc.grad.double(), leaves64[0].grad.bfloat16().double(), rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("loss_type,ls", CASES)
def test_extreme_logits(path_or_torch, loss_type, ls):
    path = path_or_torch
    beta = 0.1
    x = torch.tensor([-1000.0, -100.0, -20.0, 0.0, 20.0, 50.0, 100.0, 1000.0], device=path.device)  # beta * logits
    zeros = torch.zeros_like(x)
    pc = (x / beta).requires_grad_()  # logits = pc exactly (ref and rejected are 0)
    pr = zeros.clone().requires_grad_()
    losses, _, _ = dpo_loss(pc, pr, zeros, zeros, beta=beta, loss_type=loss_type, label_smoothing=ls)
    losses.sum().backward()
    path.assert_ran(*KERNELS)
    assert torch.isfinite(losses).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    pc64 = pc.detach().double().requires_grad_()
    want = formula64(pc64, zeros, zeros, zeros, beta, loss_type, ls)[0]
    want.sum().backward()
    torch.testing.assert_close(losses.double(), want.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pc.grad.double(), pc64.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(pr.grad, -pc.grad)
    if loss_type in ("sigmoid", "robust") and ls == 0.0:
        # Tiny losses keep their relative accuracy (log1p, not log(1 + e), of e = exp(-|x|)).
        torch.testing.assert_close(losses[4:6].double(), want[4:6].detach(), rtol=1e-5, atol=0)
    if loss_type in ("sigmoid", "robust"):
        # Limits: loss -> -x * (weight of the -logsigmoid(x) term) as x -> -inf, and -> the
        # label-smoothing term x * (its weight) as x -> +inf; slopes tend to the same weights.
        w_clean, w_flip = ((1 - ls), ls) if loss_type == "sigmoid" else ((1 - ls) / (1 - 2 * ls), -ls / (1 - 2 * ls))
        torch.testing.assert_close(losses[:2].double(), -w_clean * x[:2].double(), rtol=1e-6, atol=0)
        torch.testing.assert_close(losses[-2:].double(), w_flip * x[-2:].double(), rtol=1e-6, atol=1e-30)
        torch.testing.assert_close(pc.grad[:2].double(), torch.full((2,), -w_clean * beta, dtype=torch.float64,
                                                                    device=path.device))
        torch.testing.assert_close(pc.grad[-2:].double(), torch.full((2,), w_flip * beta, dtype=torch.float64,
                                                                     device=path.device))


def test_hinge_kink_has_zero_gradient(path):
    # beta * logits == 1 exactly: relu(0) with torch's convention of gradient 0 there.
    pc = torch.tensor([10.0, 9.0, 11.0], device=path.device, requires_grad=True)
    zeros = torch.zeros(3, device=path.device)
    dpo_loss(pc, zeros, zeros, zeros, beta=0.1, loss_type="hinge")[0].sum().backward()
    path.assert_ran(*KERNELS)
    torch.testing.assert_close(pc.grad.cpu(), torch.tensor([0.0, -0.1, 0.0]))


def as_pairs(seq):
    """(2P,) sequences interleaved (chosen_0, rejected_0, chosen_1, ...) -> (chosen, rejected)
    strided views, as the DPO recipe passes them (no copies)."""
    return seq[0::2], seq[1::2]


@pytest.mark.parametrize("loss_type,ls", CASES)
def test_interleaved_pairs_as_strided_views(path, loss_type, ls):
    P = 13
    pc, pr, rc, rr = make_inputs(P, device=path.device)
    seq = torch.stack([pc, pr], dim=1).reshape(2 * P).requires_grad_()  # (c0, r0, c1, r1, ...)
    ref = torch.stack([rc, rr], dim=1).reshape(2 * P)
    losses, chosen_rw, rejected_rw = dpo_loss(*as_pairs(seq), *as_pairs(ref), beta=0.1, loss_type=loss_type,
                                              label_smoothing=ls)
    pc64, pr64 = pc.double().requires_grad_(), pr.double().requires_grad_()
    want, want_c, want_r = formula64(pc64, pr64, rc, rr, 0.1, loss_type, ls)
    torch.testing.assert_close(losses.double(), want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chosen_rw.double(), want_c, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rejected_rw.double(), want_r, rtol=1e-6, atol=1e-6)
    losses.mean().backward()
    want.mean().backward()
    path.assert_ran(*KERNELS)
    want_grad = torch.stack([pc64.grad, pr64.grad], dim=1).reshape(2 * P)
    torch.testing.assert_close(seq.grad.double(), want_grad, rtol=1e-4, atol=1e-6)


def test_empty_batch_gives_empty_outputs(path):
    seq = torch.zeros(0, device=path.device, requires_grad=True)
    losses, chosen_rw, rejected_rw = dpo_loss(*as_pairs(seq), *as_pairs(torch.zeros(0, device=path.device)))
    path.assert_dispatched()  # nothing to launch for B = 0
    assert losses.shape == chosen_rw.shape == rejected_rw.shape == (0,)
    losses.sum().backward()
    assert seq.grad.shape == (0,)


@pytest.mark.parametrize("kwargs,match", [
    (dict(loss_type="kto"), "unknown loss_type 'kto'"),
    (dict(loss_type="robust", label_smoothing=0.5), r"\[0, 0.5\)"),
    (dict(loss_type="sigmoid", label_smoothing=-0.1), r"in \[0, 1\]"),
    (dict(loss_type="ipo", label_smoothing=0.1), "no meaning for loss_type='ipo'"),
    (dict(beta=0.0), "beta must be"),
])
def test_bad_arguments_say_what_is_wrong(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dpo_loss(*make_inputs(3), **kwargs)


def test_bad_shapes_say_what_is_wrong():
    pc, pr, rc, rr = make_inputs(4)
    with pytest.raises(ValueError, match="ref_rejected_logps is \\(3,\\)"):
        dpo_loss(pc, pr, rc, rr[:3])
    with pytest.raises(ValueError, match="1-D float tensor"):
        dpo_loss(pc[None], pr, rc, rr)


# ----------------------------------------------------------------------------- TRL parity

def trl_dpo_loss(pc, pr, rc, rr, beta, loss_type, ls):
    """Mean loss from TRL's own DPOTrainer._compute_loss (TRL >= 1.0), fed our sequence log-probs.

    A stand-in trainer and model: every sequence has one completion token whose log-prob is the
    sequence's, so TRL's sum over tokens and IPO's per-token average both return it unchanged.
    """
    from trl.trainer.dpo_trainer import DPOTrainer

    B = pc.shape[0]
    log_probs = torch.cat([pc, pr])[:, None]  # (2B, 1): batch is [chosen, rejected]

    def model(**kwargs):
        z = torch.zeros(2 * B, 1)
        return types.SimpleNamespace(log_probs=log_probs, entropy=z, mean_logits=z, is_top1=z.bool())

    model.training = False
    identity = lambda t: t  # noqa: E731
    trainer = types.SimpleNamespace(
        model=model, accelerator=types.SimpleNamespace(device=torch.device("cpu"), gather=identity,
                                                       gather_for_metrics=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=ls, use_weighting=False,
        _metrics={"train": __import__("collections").defaultdict(list),
                  "eval": __import__("collections").defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(2 * B, 2, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, 2, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1]]).expand(2 * B, 2),  # one completion token each
        "ref_chosen_logps": rc, "ref_rejected_logps": rr,
    }
    return DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


# TRL 1.x dropped cDPO label smoothing from 'sigmoid' (older TRL's dpo_loss had the formula
# tested against float64 above), so sigmoid is compared at label_smoothing=0 only.
@pytest.mark.parametrize("loss_type,ls", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.0),
                                          ("robust", 0.2)])
def test_matches_trl(loss_type, ls):
    pytest.importorskip("trl", minversion="1.0")
    gen = torch.Generator().manual_seed(3)
    pc, pr, rc, rr = make_inputs(65, gen=gen)
    a = [pc.clone().requires_grad_(), pr.clone().requires_grad_()]
    b = [pc.clone().requires_grad_(), pr.clone().requires_grad_()]
    ours = dpo_loss(*a, rc, rr, beta=0.1, loss_type=loss_type, label_smoothing=ls)[0].mean()
    theirs = trl_dpo_loss(*b, rc, rr, 0.1, loss_type, ls)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours.backward()
    theirs.backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-4, atol=1e-8)


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("loss_type,ls", CASES)
def test_gpu_matches_float64_formula(cuda_path, loss_type, ls, dtype):
    gen = torch.Generator().manual_seed(11)
    inputs = [t.cuda() for t in make_inputs(65537, dtype=dtype, gen=gen)]
    pc, pr = (t.clone().requires_grad_() for t in inputs[:2])
    losses, chosen_rw, rejected_rw = dpo_loss(pc, pr, *inputs[2:], beta=0.1, loss_type=loss_type,
                                              label_smoothing=ls)
    g = torch.randn(losses.shape, device="cuda")
    losses.backward(g)
    cuda_path.assert_ran(*KERNELS)
    leaves = [t.double().requires_grad_() for t in inputs[:2]]
    want, want_c, want_r = formula64(*leaves, *inputs[2:], 0.1, loss_type, ls)
    (dl,) = torch.autograd.grad(want, leaves[0], torch.ones_like(want), retain_graph=True)
    want.backward(g.double())
    # GPU exp/log are approximate (a few ulp) and logits round in fp32: compare with margin.
    err = logits_err(inputs)
    tol = err * dl.abs() + 1e-5 * want.abs() + 1e-5
    assert ((losses.double() - want.detach()).abs() <= tol).all()
    torch.testing.assert_close(chosen_rw.double(), want_c, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rejected_rw.double(), want_r, rtol=1e-6, atol=1e-6)
    gtol = g.double().abs() * (2 * err + 1e-5 * dl.abs()) + 1e-6
    if dtype == torch.bfloat16:
        gtol = gtol + leaves[0].grad.abs() * 2 ** -8
    assert ((pc.grad.double() - leaves[0].grad).abs() <= gtol).all()
    assert ((pr.grad.double() - leaves[1].grad).abs() <= gtol).all()
