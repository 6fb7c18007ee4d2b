"""pytest-benchmark view of bench_norm_rope_swiglu at small shapes (runs on CPU):

    python -m pytest bench/test_bench_norm_rope_swiglu.py --benchmark-group-by=group

Each (kernel, mode) group times the eager reference, torch.compile of it and, with CUDA, the
Triton kernel. Before timing, each implementation's outputs and gradients are checked against
the eager reference, so a benchmark of a wrong kernel fails instead of reporting a time.
"""
import functools

import pytest
import torch

from ie_engine.bench.bench_norm_rope_swiglu import MODES, SMALL, build_cases, mode_fn

ON_GPU = torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def cases() -> dict:
    torch.manual_seed(0)
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    return {c.kernel: c for c in build_cases(SMALL, dtype, "cuda" if ON_GPU else "cpu", with_triton=ON_GPU)}


def _results(case, f):
    outs = f(*case.inputs)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    return outs + list(torch.autograd.grad(outs, case.inputs, case.grads))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["ref", "compiled", "triton"])
@pytest.mark.parametrize("kernel", ["rms_norm", "swiglu", "rope"])
def test_bench(benchmark, kernel, impl, mode):
    case = cases()[kernel]
    if impl not in case.impls:
        pytest.skip("the Triton kernel is only timed on CUDA (the CPU interpreter is not a speed path)")
    f = case.impls[impl]
    tol = 2e-2 if ON_GPU else 1e-5
    for got, want in zip(_results(case, f), _results(case, case.impls["ref"])):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    fn = mode_fn(case, f, mode)
    run = (lambda: (fn(), torch.cuda.synchronize())) if ON_GPU else fn
    benchmark.group = f"{kernel} {mode}"
    benchmark(run)
