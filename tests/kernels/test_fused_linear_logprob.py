"""fused_linear_logprob, fused_linear_cross_entropy and sequence_logps against float64 references.

Kernel cases run on the paths of tests/kernels/conftest.py: the Triton row kernels in the
interpreter on CPU and compiled on CUDA, and cpu-torch, the chunked PyTorch path. Sizes are odd;
V = 4131 spans two vocab blocks of the row kernels (BLOCK_V = 4096), the last one partial.
"""
import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ie_engine.kernels.cross_entropy import fused_linear_cross_entropy, fused_linear_cross_entropy_ref
from ie_engine.kernels.fused_linear_logprob import fused_linear_logprob, fused_linear_logprob_ref, sequence_logps

from helpers import rel_err

# the module, not the function of the same name that kernels/__init__.py exports
flp = importlib.import_module("ie_engine.kernels.fused_linear_logprob")
chunk_matmul = importlib.import_module("ie_engine.kernels._chunk_matmul")
N, H, V = 37, 29, 4131
KERNELS = ("_flp_fwd_kernel", "_flp_bwd_kernel")
assert flp.BLOCK_V < V < 2 * flp.BLOCK_V


def make_inputs(n=N, h=H, v=V, seed=0, ignore=(3, 10, 11, 12), scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) / h**0.5 * scale  # logits ~ N(0, scale^2)
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[list(i for i in ignore if i < n)] = -100
    grad = torch.randn(n, generator=gen, dtype=torch.float64)
    return hidden, weight, labels, grad


def ref_with_grads(hidden, weight, labels, grad):
    """float64 output of the plain spec and its gradients for the per-token upstream grad."""
    h = hidden.detach().double().clone().requires_grad_()
    w = weight.detach().double().clone().requires_grad_()
    out = fused_linear_logprob_ref(h, w, labels)
    (out * grad.double().to(out.device)).sum().backward()
    return out.detach().cpu(), h.grad.cpu(), w.grad.cpu()


def run_fused(hidden, weight, labels, grad, device, dtype, **kwargs):
    h = hidden.detach().to(device, dtype).clone().requires_grad_()
    w = weight.detach().to(device, dtype).clone().requires_grad_()
    out = fused_linear_logprob(h, w, labels.to(device), **kwargs)
    (out * grad.to(device, torch.float32)).sum().backward()
    return out, h.grad, w.grad


def assert_close(actual, expected, rtol, atol):
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol)


def rounded(hidden, weight, dtype):
    """hidden, weight rounded to dtype, back in float64: the exact inputs a dtype run sees."""
    return hidden.to(dtype).double(), weight.to(dtype).double()


@pytest.mark.parametrize("chunk", [None, 8, 5])  # 37 = 4 * 8 + 5: a partial last chunk
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprob_and_grads_match_float64(path_or_torch, dtype, chunk):
    path = path_or_torch
    hidden, weight, labels, grad = make_inputs(seed=chunk or 1)
    hidden, weight = rounded(hidden, weight, dtype)
    out, dh, dw = run_fused(hidden, weight, labels, grad, path.device, dtype, chunk_tokens=chunk)
    path.assert_ran(*KERNELS)
    ref, ref_dh, ref_dw = ref_with_grads(hidden, weight, labels, grad)
    assert out.dtype == torch.float32 and out.shape == (N,)
    assert dh.dtype == dtype and dw.dtype == dtype
    # log-probs come from fp32 logits whatever the input dtype: only the gradients are rounded
    assert_close(out, ref, rtol=1e-5, atol=1e-5)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-2)
    assert_close(dh, ref_dh, **tol)
    assert_close(dw, ref_dw, **tol)
    assert (out[labels.to(path.device) == -100] == 0).all()


@pytest.mark.parametrize("v", [77, 4096, 2 * 4096 + 77])  # one block smaller than V's power of 2; exact; 3 blocks
def test_vocab_block_sizes(path_or_torch, v):
    path = path_or_torch
    hidden, weight, labels, grad = make_inputs(n=9, v=v, seed=v)
    out, dh, dw = run_fused(hidden, weight, labels, grad, path.device, torch.float32)
    path.assert_ran(*KERNELS)
    ref, ref_dh, ref_dw = ref_with_grads(hidden, weight, labels, grad)
    for a, b in [(out, ref), (dh, ref_dh), (dw, ref_dw)]:
        assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_ignored_chunk_and_whole_batch(path_or_torch):
    path = path_or_torch
    hidden, weight, labels, grad = make_inputs(ignore=range(8, 16))  # chunk 1 fully ignored
    out, dh, dw = run_fused(hidden, weight, labels, grad, path.device, torch.float32, chunk_tokens=8)
    path.assert_ran(*KERNELS)
    ref, ref_dh, ref_dw = ref_with_grads(hidden, weight, labels, grad)
    assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert_close(dh, ref_dh, rtol=1e-5, atol=1e-5)
    assert_close(dw, ref_dw, rtol=1e-5, atol=1e-5)
    assert (dh[8:16] == 0).all()

    labels = torch.full_like(labels, -100)
    out, dh, dw = run_fused(hidden, weight, labels, grad, path.device, torch.float32, chunk_tokens=8)
    assert (out == 0).all() and (dh == 0).all() and (dw == 0).all()
    h = hidden.to(path.device, torch.float32).requires_grad_()
    w = weight.to(path.device, torch.float32).requires_grad_()
    loss = fused_linear_cross_entropy(h, w, labels.to(path.device), chunk_tokens=8)
    loss.backward()
    assert loss.item() == 0 and (h.grad == 0).all() and (w.grad == 0).all()


def test_confident_prediction_keeps_relative_precision(path_or_torch):
    """p(label) ~ 1 - 1e-6: log p ~ -1e-6 must keep its relative precision (log1p/expm1 path)."""
    path = path_or_torch
    hidden, weight, labels, grad = make_inputs(n=5, ignore=())
    z = hidden @ weight.T
    target = torch.tensor(-1e-6, dtype=torch.float64)
    for i in list(range(5)) * 3:  # move the label's weight row along h_i until log p ~ -1e-6
        lo, hi = -50.0, 100.0  # (three sweeps, since rows share the weight)
        for _ in range(100):
            c = (lo + hi) / 2
            zi = z[i] + c * (torch.arange(V) == labels[i]) * hidden[i].norm() ** 2
            lo, hi = (c, hi) if zi.log_softmax(0)[labels[i]] < target else (lo, c)
        weight[labels[i]] += hi * hidden[i]
        z = hidden @ weight.T
    out, dh, _ = run_fused(hidden, weight, labels, grad, path.device, torch.float32)
    path.assert_ran(*KERNELS)
    ref, ref_dh, _ = ref_with_grads(hidden, weight, labels, grad)
    assert (ref.abs() < 3e-6).all() and (ref.abs() > 3e-7).all()
    rel = ((out.double().cpu() - ref) / ref).abs().max()
    assert rel < 1e-3, (rel, out, ref)  # log(sum) in fp32 would be ~6% off here
    rel_dh = (dh.double().cpu() - ref_dh).norm() / ref_dh.norm()
    assert rel_dh < 1e-3, rel_dh


def test_bf16_inputs_get_fp32_logits(path_or_torch):
    """bf16 hidden and weight with logits |z| up to ~35: log-probs match float64 on the same
    (rounded) inputs to ~1e-5 nats. Logits rounded to bf16 before the logsumexp, the contract
    before this test, are off by up to ~0.1 nats per token here, summed over a DPO response."""
    path = path_or_torch
    hidden, weight, labels, _ = make_inputs(n=64, h=256, v=1000, seed=5, ignore=(7,), scale=8.0)
    hidden, weight = rounded(hidden, weight, torch.bfloat16)
    z = hidden @ weight.T
    assert z.abs().max() > 20
    keep = labels != -100
    want = fused_linear_logprob_ref(hidden, weight, labels)  # float64
    bf16_logits = z.bfloat16().double().log_softmax(-1).gather(1, labels.clamp(min=0)[:, None])[:, 0] * keep
    tol = 1e-3  # nats per token
    assert (bf16_logits - want).abs().max() > 30 * tol  # the old contract fails this test by far

    h, w, lab = hidden.to(path.device, torch.bfloat16), weight.to(path.device, torch.bfloat16), labels.to(path.device)
    got = fused_linear_logprob(h, w, lab, chunk_tokens=16)
    loss = fused_linear_cross_entropy(h, w, lab, chunk_tokens=16)
    path.assert_dispatched()
    assert (got.double().cpu() - want).abs().max() < tol
    ce_want = -want.sum() / keep.sum()
    assert (loss.double().cpu() - ce_want).abs() < tol
    # the references follow the same contract for bf16 inputs
    assert (fused_linear_logprob_ref(h, w, lab).double().cpu() - want).abs().max() < tol
    assert (fused_linear_cross_entropy_ref(h, w, lab).double().cpu() - ce_want).abs() < tol


class _Allocations(TorchDispatchMode):
    """Records every tensor an op allocates (outputs that alias no input: not views, not out=
    or in-place results). With emulate_fp32_out, runs torch.mm/addmm(out_dtype=float32), which
    CPU torch lacks, as fp32 math on the same half operands (the mode's own ops are not recorded)."""

    def __init__(self, emulate_fp32_out=False):
        super().__init__()
        self.emulate, self.allocs, self.fp32_out_calls = emulate_fp32_out, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten.mm.dtype_out, torch.ops.aten.addmm.dtype_out):
            self.fp32_out_calls.append(func.__name__)
            if self.emulate:
                *mats, out_dtype = args
                product = mats[-2].to(out_dtype) @ mats[-1].to(out_dtype)
                return kwargs["out"].copy_(product if len(mats) == 2 else mats[0] + product)
        out = func(*args, **kwargs)
        for res, ret in zip(out if isinstance(out, (tuple, list)) else [out], func._schema.returns):
            if isinstance(res, torch.Tensor) and ret.alias_info is None:
                self.allocs.append((func.__name__, tuple(res.shape), res.dtype))
        return out


@pytest.mark.parametrize("fp32_out", [False, True], ids=["upcast-blocks", "mm-out-dtype"])
def test_no_weight_sized_temporary_per_chunk(path_or_torch, fp32_out, monkeypatch):
    """bf16 inputs over 8 chunks: the forward allocates nothing of the weight's size and the
    backward exactly two such tensors (the fp32 dW accumulator and its cast to bf16), so no
    chunk ever makes a (V, H) copy of the weight. Both ways to fp32 logits: upcasting blocks of
    weight rows (CPU, older torch) and torch.mm(out_dtype=float32) (CUDA; emulated on CPU)."""
    path = path_or_torch
    if path.device == "cuda" and fp32_out and not flp._has_fp32_out_mm("cuda", torch.bfloat16):
        pytest.skip("this torch has no torch.mm(out_dtype=float32) on CUDA")
    if not fp32_out or path.device == "cpu":
        for module in (flp, chunk_matmul):  # the chunk loop asks, and so do the matmuls
            monkeypatch.setattr(module, "_has_fp32_out_mm", lambda device_type, dtype: fp32_out)
    n, h, v, chunk = 37, 64, 300, 5  # chunk logits (5 x 300) are smaller than the weight (300 x 64)
    hidden, weight, labels, grad = make_inputs(n=n, h=h, v=v, seed=11)
    hidden, weight = rounded(hidden, weight, torch.bfloat16)
    x = hidden.to(path.device, torch.bfloat16).requires_grad_()
    w = weight.to(path.device, torch.bfloat16).requires_grad_()
    lab, g = labels.to(path.device), grad.to(path.device, torch.float32)
    fwd, bwd = _Allocations(emulate_fp32_out=path.device == "cpu"), _Allocations(emulate_fp32_out=path.device == "cpu")
    with fwd:
        out = fused_linear_logprob(x, w, lab, chunk_tokens=chunk)
    with bwd:
        out.backward(g)
    path.assert_ran(*KERNELS)
    big = lambda allocs: [a for a in allocs if torch.Size(a[1]).numel() >= v * h]  # noqa: E731
    assert big(fwd.allocs) == [], big(fwd.allocs)
    assert sorted(str(dt) for _, _, dt in big(bwd.allocs)) == ["torch.bfloat16", "torch.float32"], big(bwd.allocs)
    chunks = -(-n // chunk)
    if fp32_out:  # logits per chunk in the forward and again in the backward, plus dW per chunk
        assert fwd.fp32_out_calls == ["mm.dtype_out"] * chunks
        assert sorted(bwd.fp32_out_calls) == ["addmm.dtype_out"] * chunks + ["mm.dtype_out"] * chunks
    else:
        assert fwd.fp32_out_calls == bwd.fp32_out_calls == []
    ref, ref_dh, ref_dw = ref_with_grads(hidden, weight, labels, grad)
    assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert_close(x.grad, ref_dh, rtol=1e-2, atol=2e-2)
    assert_close(w.grad, ref_dw, rtol=1e-2, atol=2e-2)


def test_backward_saves_no_logits(path_or_torch):
    """Nothing of size N * V is saved for backward: gradients come from recomputed chunks."""
    path = path_or_torch
    hidden, weight, labels, grad = make_inputs()
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        h = hidden.float().to(path.device).requires_grad_()
        w = weight.float().to(path.device).requires_grad_()
        fused_linear_logprob(h, w, labels.to(path.device))
        fused_linear_cross_entropy(h, w, labels.to(path.device))
    path.assert_ran("_flp_fwd_kernel", "_flp_bwd_kernel")  # the cross-entropy's forward runs both
    assert sizes and max(sizes) < N * V


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_over_micro_batches_equals_full_batch(path_or_torch, dtype):
    path = path_or_torch
    hidden, weight, labels, _ = make_inputs(seed=7)
    if dtype == torch.bfloat16:
        hidden, weight = rounded(hidden, weight, dtype)
    h64, w64 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = fused_linear_cross_entropy_ref(h64, w64, labels)  # the full batch's token mean
    ref.backward()

    h = hidden.to(path.device, dtype).requires_grad_()
    w = weight.to(path.device, dtype).requires_grad_()
    lab = labels.to(path.device)
    num_valid = torch.tensor((labels != -100).sum().item(), device=path.device)  # whole step
    total = 0.0
    for part in (slice(0, 20), slice(20, N)):  # two micro-batches, one grad accumulation step
        loss = fused_linear_cross_entropy(h[part], w, lab[part], num_valid_tokens=num_valid, chunk_tokens=8)
        loss.backward()
        total = total + loss.detach()
    path.assert_ran(*KERNELS)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    assert_close(total, ref.detach(), **tol)
    assert_close(h.grad, h64.grad, **tol)
    assert_close(w.grad, w64.grad, **tol)

    # default num_valid_tokens = this call's count, i.e. the plain mean; int counts work too
    one = fused_linear_cross_entropy(h.detach(), w.detach(), lab)
    assert_close(one, ref.detach(), **tol)
    two = fused_linear_cross_entropy(h.detach(), w.detach(), lab, num_valid_tokens=2 * int(num_valid))
    assert_close(two, ref.detach() / 2, **tol)


def test_sequence_logps_against_loop():
    gen = torch.Generator().manual_seed(3)
    doc_ids = torch.tensor([0, 0, 0, 1, 1, -1, 2, 2, 2, 2, -1, -1, 4, 0, 0, -1, 4])  # 3: empty
    token_logps = torch.randn(len(doc_ids), generator=gen, dtype=torch.float64).requires_grad_()
    weights = torch.randn(5, generator=gen, dtype=torch.float64)
    out = sequence_logps(token_logps, doc_ids, 5)
    (out * weights).sum().backward()
    expect = torch.zeros(5, dtype=torch.float64)
    expect_grad = torch.zeros(len(doc_ids), dtype=torch.float64)
    for i, d in enumerate(doc_ids.tolist()):
        if d >= 0:
            expect[d] += token_logps[i].item()
            expect_grad[i] = weights[d]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expect, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(token_logps.grad, expect_grad)


# ----------------------------------------------------------------------------- GPU, bf16

def chunked(fn, hidden, weight, labels, grad, dtype, rows=8192):
    """fn(h, w, labels) -> per-token log-probs, in dtype, a slice of rows at a time so the float64
    reference of a large case fits; returns output and grads."""
    h = hidden.detach().to(dtype).clone().requires_grad_()
    w = weight.detach().to(dtype).clone().requires_grad_()
    outs = []
    for s in range(0, len(labels), rows):
        out = fn(h[s:s + rows], w, labels[s:s + rows])
        (out * grad[s:s + rows].to(out.dtype)).sum().backward()
        outs.append(out.detach())
    return torch.cat(outs), h.grad, w.grad


def eager_bf16(h, w, labels):
    """What plain PyTorch / Hugging Face computes: bf16 logits, upcast for the log-softmax."""
    ignored = labels == -100
    logp = (h @ w.T).float().log_softmax(-1).gather(1, labels.masked_fill(ignored, 0)[:, None])[:, 0]
    return logp.masked_fill(ignored, 0.0)


@pytest.mark.gpu
@pytest.mark.parametrize("n,h,v,one_chunk", [(4099, 1024, 32003, False), (65600, 64, 32768, True)])
def test_gpu_bf16_no_worse_than_torch_bf16(cuda_path, n, h, v, one_chunk):
    """bf16 on CUDA vs float64: error no worse than plain PyTorch bf16's plus a small margin.
    The second case has N * V > 2^31 and runs as one chunk, so the kernels' int64 row offsets
    address more than 2^31 logits."""
    torch.manual_seed(0)
    hidden = torch.randn(n, h, device="cuda").bfloat16()
    weight = (torch.randn(v, h, device="cuda") / h**0.5 * 3).bfloat16()
    labels = torch.randint(0, v, (n,), device="cuda")
    labels[::7] = -100
    grad = torch.randn(n, device="cuda")
    ref = chunked(fused_linear_logprob_ref, hidden, weight, labels, grad, torch.float64)
    eager = chunked(eager_bf16, hidden, weight, labels, grad, torch.bfloat16)
    fused = run_fused(hidden, weight, labels, grad, "cuda", torch.bfloat16, chunk_tokens=n if one_chunk else None)
    cuda_path.assert_ran(*KERNELS)
    for name, f, e, r in zip(["logp", "dh", "dw"], fused, eager, ref):
        assert f.isfinite().all(), name
        assert rel_err(f, r) <= 1.1 * rel_err(e, r) + 1e-3, (name, rel_err(f, r), rel_err(e, r))
    assert (fused[0][labels == -100] == 0).all()
