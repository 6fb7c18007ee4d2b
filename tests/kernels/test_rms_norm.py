"""ie_engine.kernels.rms_norm against its spec (rms_norm_ref) run in float64: output, dx and dweight.

Kernel cases run on the paths of tests/kernels/conftest.py (the interpreter on CPU, compiled on
CUDA). The interpreter truncates fp32 -> bf16 casts (Triton 3.9 casts with no rounding mode),
where a GPU rounds to nearest even, so the bf16 tolerance allows ~2 bf16 ulps.
"""
import pytest
import torch

from ie_engine.kernels.rms_norm import rms_norm, rms_norm_ref

from helpers import rel_err

EPS = 1e-5
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
KERNELS = ("_rms_norm_fwd_kernel", "_rms_norm_bwd_kernel")


def run(fn, x, w, dy):
    """Output, dx, dweight of fn on leaf copies of x and w."""
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    y = fn(x, w, EPS)
    y.backward(dy)
    return y, x.grad, w.grad


def float64_spec(x, w, dy):
    return run(rms_norm_ref, x.double(), w.double(), dy.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,strided", [((37, 29), False), ((2, 5, 67), False), ((37, 29), True),
                                           ((1, 3), False), ((3, 1000), True)])
def test_triton_matches_float64_spec(path, shape, strided, dtype):
    H = shape[-1]
    base = torch.randn(*shape[:-1], H + 11 if strided else H, device=path.device, dtype=dtype)
    x = base[..., :H]  # strided: rows H + 11 apart, as in a slice of a wider activation
    w = (1 + 0.5 * torch.randn(H, device=path.device)).to(dtype)
    dy = torch.randn(shape, device=path.device, dtype=dtype)
    y, dx, dw = run(rms_norm, x, w, dy)
    path.assert_ran(*KERNELS)
    assert y.shape == x.shape and y.dtype == dtype and dx.dtype == dtype and dw.dtype == dtype
    for got, want in zip((y, dx, dw), float64_spec(x, w, dy)):
        assert rel_err(got, want) < TOL[dtype]


def test_mixed_weight_dtype_follows_promotion(path):
    # fp32 weight on bf16 activations: torch promotion gives an fp32 output, like the reference.
    x = torch.randn(7, 29, device=path.device, dtype=torch.bfloat16)
    w = torch.randn(29, device=path.device)
    dy = torch.randn(7, 29, device=path.device)
    y, dx, dw = run(rms_norm, x, w, dy)
    path.assert_ran(*KERNELS)
    y_ref, dx_ref, dw_ref = run(rms_norm_ref, x, w, dy)
    assert (y.dtype, dx.dtype, dw.dtype) == (y_ref.dtype, dx_ref.dtype, dw_ref.dtype)
    for got, want in zip((y, dx, dw), float64_spec(x, w, dy)):
        assert rel_err(got, want) < 2e-2


def test_reference_path_on_cpu():
    x, w, dy = torch.randn(37, 67), torch.randn(67), torch.randn(37, 67)
    y, dx, dw = run(rms_norm, x, w, dy)
    assert "RMSNormFunction" not in type(y.grad_fn).__name__, "CPU tensors must take the reference"
    for got, want in zip((y, dx, dw), float64_spec(x, w, dy)):
        assert rel_err(got, want) < 1e-5


@pytest.mark.gpu
def test_gpu_bf16_no_worse_than_torch_bf16(cuda_path):
    """At a LLaMA-like size the kernel's bf16 error vs float64 is at most plain PyTorch's."""
    x = torch.randn(2048, 4096, device="cuda", dtype=torch.bfloat16)
    w = (1 + 0.1 * torch.randn(4096, device="cuda")).to(torch.bfloat16)
    dy = torch.randn_like(x)
    spec = float64_spec(x, w, dy)
    got = run(rms_norm, x, w, dy)
    cuda_path.assert_ran(*KERNELS)
    for got, torch_bf16, want in zip(got, run(rms_norm_ref, x, w, dy), spec):
        mean_err = lambda t: ((t.double() - want).abs().mean() / want.abs().mean()).item()  # noqa: E731
        assert mean_err(got) <= 1.05 * mean_err(torch_bf16) + 1e-4
