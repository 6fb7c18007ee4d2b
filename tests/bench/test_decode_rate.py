"""bench_generate's decode rate, (t(N) - t(1)) / (N - 1): neither the 1-token call's one-time
set-up (on CUDA its own Generator and graph captures) nor a single outlier call is in it
(issue 20, finding 8: with one timed call the set-up made the step ~50% too short at 7B)."""
import time

import pytest
import torch

from ie_engine.bench.bench_generate import MIN_REP, decode_rate

from helpers import make_model, tiny_model_config

STEP_S, SETUP_S, N = 0.005, 0.3, 21


def test_decode_rate_times_neither_set_up_nor_one_call():
    calls, built = [], set()

    def generate(n):  # a stand-in generator: set-up on the first call of each length, then n steps
        calls.append(n)
        if n not in built:
            built.add(n)
            time.sleep(SETUP_S)
        time.sleep(STEP_S * n)

    model = make_model(tiny_model_config())
    generate(N)  # bench_batch's warm-up call, before decode_rate
    row = decode_rate(generate, model, [[1] * 7, [1] * 9], N, torch.device("cpu"), rep=1)
    assert row["decode_step_ms"] == pytest.approx(1e3 * STEP_S, rel=0.3)
    assert calls.count(1) >= 1 + MIN_REP and calls.count(N) >= MIN_REP  # warm-up + timed calls
