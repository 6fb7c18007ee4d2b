"""pytest-benchmark view of bench_generate at a small size (tiny model, 8 prompts, 32 new tokens):

    python -m pytest bench/test_bench_generate.py --benchmark-group-by=group

Before timing, ours and transformers are checked to produce the same greedy ids, so a benchmark
of a wrong generator fails instead of reporting a time.
"""
import functools
import tempfile

import pytest
import torch

from ie_engine.bench import bench_generate
from ie_engine.engine.model.config import ModelConfig

TINY = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=2048, multiple_of=32, max_seq_len=512)
NEW = 32


@functools.lru_cache(maxsize=None)
def setup():
    torch.set_num_threads(1)
    prompts = bench_generate.bundled_prompts(8, tempfile.mkdtemp())
    ours, hf = bench_generate.build_pair(TINY, torch.device("cpu"), torch.float32)
    return prompts, ours, hf


@pytest.mark.parametrize("impl", ["ours", "transformers"])
def test_bench_generate_greedy(benchmark, impl):
    pytest.importorskip("transformers")
    prompts, ours, hf = setup()
    fn = {"ours": lambda: bench_generate.run_ours(ours, prompts, NEW, {}),
          "transformers": lambda: bench_generate.run_hf(hf, prompts, NEW)}[impl]
    assert bench_generate.run_ours(ours, prompts, NEW, {}) == bench_generate.run_hf(hf, prompts, NEW)
    benchmark.group = f"generate greedy 8x{NEW}"
    benchmark(fn)
