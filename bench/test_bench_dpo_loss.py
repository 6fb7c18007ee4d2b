"""pytest-benchmark view of the DPO loss (forward + backward), each run checked against eager.

    python -m pytest bench/test_bench_dpo_loss.py --benchmark-only

bench/bench_dpo_loss.py is the full sweep with GB/s and memory; this file is for comparing runs
with pytest-benchmark's own tooling (--benchmark-autosave, --benchmark-compare). The Triton
rows need CUDA; on CPU the public function is the reference, so CPU compares eager and compiled.
"""
import pytest
import torch

from ie_engine.bench.bench_dpo_loss import make_inputs
from ie_engine.kernels.dpo_loss import dpo_loss, dpo_loss_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMPLS = {
    "triton": dpo_loss,
    "eager_ref": dpo_loss_ref,
    "compiled_ref": torch.compile(dpo_loss_ref, dynamic=False),
}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("B", [4096, 65536])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_dpo_loss_fwd_bwd(benchmark, impl, B, loss_type):
    if impl == "triton" and DEVICE != "cuda":
        pytest.skip("the Triton kernel runs on CUDA (CPU has only the interpreter, a test tool)")
    fn = IMPLS[impl]
    pc, pr, rc, rr = make_inputs(B, DEVICE)
    g = torch.randn(B, device=DEVICE)

    def step():
        losses = fn(pc, pr, rc, rr, 0.1, loss_type, 0.0)[0]
        grads = torch.autograd.grad(losses, (pc, pr), g)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return losses, grads

    step()  # compile and warm up outside the timed rounds (calibration would count it)
    losses, grads = benchmark(step)
    want = dpo_loss_ref(pc, pr, rc, rr, 0.1, loss_type, 0.0)[0]
    want_grads = torch.autograd.grad(want, (pc, pr), g)
    torch.testing.assert_close(losses, want, rtol=1e-5, atol=1e-5)
    for got, exp in zip(grads, want_grads):
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-6)
