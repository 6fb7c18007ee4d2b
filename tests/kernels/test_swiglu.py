"""ie_engine.kernels.swiglu against its spec (swiglu_ref) run in float64: output, dgate and dup.

Kernel cases run on the paths of tests/kernels/conftest.py (the interpreter on CPU, compiled on
CUDA). The interpreter truncates fp32 -> bf16 casts where a GPU rounds to nearest even, so the
bf16 tolerance allows ~2 bf16 ulps.
"""
import pytest
import torch
import torch.nn.functional as F

from ie_engine.kernels.swiglu import swiglu, swiglu_ref

from helpers import rel_err

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
KERNELS = ("_swiglu_fwd_kernel", "_swiglu_bwd_kernel")


def run(fn, gate, up, dy):
    """Output, dgate, dup of fn on leaf copies of gate and up."""
    gate, up = gate.detach().requires_grad_(), up.detach().requires_grad_()
    y = fn(gate, up)
    y.backward(dy)
    return y, gate.grad, up.grad


def float64_spec(gate, up, dy):
    return run(swiglu_ref, gate.double(), up.double(), dy.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(37, 67), (2, 3, 29), (1100,), (3, 2049)])  # (3, 2049): 3 column blocks
def test_triton_matches_float64_spec(path, shape, dtype):
    gate = 3 * torch.randn(shape, device=path.device, dtype=dtype)  # wide enough to reach silu's tails
    up = torch.randn(shape, device=path.device, dtype=dtype)
    dy = torch.randn(shape, device=path.device, dtype=dtype)
    y, dgate, dup = run(swiglu, gate, up, dy)
    path.assert_ran(*KERNELS)
    assert y.shape == gate.shape and y.dtype == dgate.dtype == dup.dtype == dtype
    for got, want in zip((y, dgate, dup), float64_spec(gate, up, dy)):
        assert rel_err(got, want) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_halves_of_fused_projection(path, dtype):
    # gate and up as the two halves of one (B, T, 2F) projection output: row-strided views,
    # and the gradient must land in the right half of the fused tensor's gradient.
    fused = torch.randn(2, 13, 2 * 67, device=path.device, dtype=dtype, requires_grad=True)
    dy = torch.randn(2, 13, 67, device=path.device, dtype=dtype)
    swiglu(*fused.chunk(2, dim=-1)).backward(dy)
    path.assert_ran(*KERNELS)
    g64, u64 = fused.detach().double().chunk(2, dim=-1)
    _, dgate, dup = float64_spec(g64, u64, dy)
    assert rel_err(fused.grad, torch.cat((dgate, dup), dim=-1)) < TOL[dtype]


def test_reference_path_on_cpu():
    gate, up, dy = torch.randn(37, 67), torch.randn(37, 67), torch.randn(37, 67)
    y, dgate, dup = run(swiglu, gate, up, dy)
    assert "SwiGLUFunction" not in type(y.grad_fn).__name__, "CPU tensors must take the reference"
    for got, want in zip((y, dgate, dup), float64_spec(gate, up, dy)):
        assert rel_err(got, want) < 1e-5


@pytest.mark.gpu
def test_gpu_bf16_no_worse_than_torch_bf16(cuda_path):
    """At a LLaMA-7B FFN size the kernel's bf16 error vs float64 is at most that of the plain
    bf16 PyTorch form, F.silu(gate) * up (what Hugging Face's LlamaMLP computes)."""
    shape = (2048, 11008)
    gate = 3 * torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    up, dy = torch.randn_like(gate), torch.randn_like(gate)
    spec = float64_spec(gate, up, dy)
    plain = run(lambda g, u: F.silu(g) * u, gate, up, dy)
    got = run(swiglu, gate, up, dy)
    cuda_path.assert_ran(*KERNELS)
    for got, torch_bf16, want in zip(got, plain, spec):
        mean_err = lambda t: ((t.double() - want).abs().mean() / want.abs().mean()).item()  # noqa: E731
        assert mean_err(got) <= 1.05 * mean_err(torch_bf16) + 1e-4
