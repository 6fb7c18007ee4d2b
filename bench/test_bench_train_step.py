"""pytest-benchmark: one SFT / DPO optimizer step per case of bench/bench_train_step.py, CPU, tiny.

    pytest bench/test_bench_train_step.py --benchmark-only

The "tiny" preset (dim 64, 2 layers, vocab 4096, rows of 256 tokens), fp32, TRITON_INTERPRET=0
(the kernels' PyTorch references). Cases whose baseline library is not installed are skipped.
The real numbers come from `python -m ie_engine.bench.bench_train_step`; this view keeps the cases
running and checks, before timing, that every SFT case computes the same loss and gradient norm
on the same examples and weights, and every DPO case too.
"""
import math
import os

import pytest
import torch

from ie_engine.bench.bench_train_step import DPO_CASES, NEEDS, PRESETS, SFT_CASES, build_cases, check_agreement


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    torch.manual_seed(0)  # build_cases leaves out the cases whose package is missing
    cases, _ = build_cases(PRESETS["tiny"], torch.device("cpu"), torch.float32,
                           str(tmp_path_factory.mktemp("train_step")), padded_per_batch=4)
    first = {c.name: c.run() for c in cases}  # also the warm-up (AdamW state)
    yield {c.name: c for c in cases}, first
    if old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old


def test_cases_agree(suite):
    cases, first = suite
    assert {"ours_fused_packed", "ours_dpo_packed"} <= set(cases)
    assert check_agreement(list(cases.values()), first, rtol=1e-4) == []


@pytest.mark.parametrize("name", SFT_CASES + DPO_CASES)
def test_step(benchmark, suite, name):
    cases, _ = suite
    if name not in cases:
        pytest.skip(f"{', '.join(NEEDS[name])} not installed")
    out = benchmark.pedantic(cases[name].run, rounds=2, warmup_rounds=0)
    assert math.isfinite(out["loss"]) and out["grad_norm"] > 0
