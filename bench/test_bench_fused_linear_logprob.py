"""pytest-benchmark: fused log-probs / SFT cross-entropy vs eager, fwd+bwd, on a small CPU size.

    pytest bench/test_bench_fused_linear_logprob.py --benchmark-only

CPU runs the chunked PyTorch reference path (CPU tensors always do), fp32, N=1024, H=512, V=8000.
The full-size numbers (and GPU) come from `python -m ie_engine.bench.bench_fused_linear_logprob`.
"""
import pytest
import torch

from ie_engine.bench.bench_fused_linear_logprob import cases, compare_logits_dtype, fwd_bwd, make_inputs

CASES = ["eager_logprob", "fused_logprob", "eager_ce", "fused_ce"]


@pytest.mark.parametrize("name", CASES)
def test_fwd_bwd(benchmark, name):
    hidden, weight, labels, grad = make_inputs(1024, 512, 8000, torch.float32, "cpu")
    kind, fwd = cases(hidden, weight, labels, grad)[name]
    run = fwd_bwd(kind, fwd, grad, (hidden, weight))
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert hidden.grad is not None and hidden.grad.isfinite().all()


def test_gpu_cases_run_on_cpu():
    """The GPU run's extra cases (--bf16-logits: the fused ops with bf16 chunk logits) build and
    run; here on tiny bf16 CPU inputs, so that a GPU run does not find a broken case."""
    hidden, weight, labels, grad = make_inputs(64, 32, 300, torch.bfloat16, "cpu")
    todo = cases(hidden, weight, labels, grad, chunk=16, bf16_logits=True)
    assert {"fused_logprob_bf16logits", "fused_ce_bf16logits"} <= set(todo)
    for name, (kind, fwd) in todo.items():
        fwd_bwd(kind, fwd, grad, (hidden, weight))()
        assert hidden.grad.isfinite().all() and weight.grad.isfinite().all(), name
    rows = [{"case": "fused_logprob", "mode": "fwd", "ms": 3.0, "extra_peak_MiB": 30.0},
            {"case": "fused_logprob_bf16logits", "mode": "fwd", "ms": 2.0, "extra_peak_MiB": 20.0}]
    compare_logits_dtype(rows)
    assert rows[0]["time_vs_bf16_logits"] == 1.5 and rows[0]["mem_vs_bf16_logits"] == 1.5
