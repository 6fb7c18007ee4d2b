"""bench/bench_families.py at a toy size: it runs, and the fused head's workspace is the smaller
one once N spans several chunks. The numbers come from `python -m ie_engine.bench.bench_families`."""
import importlib

from ie_engine.bench.bench_families import bench_vocab

flp = importlib.import_module("ie_engine.kernels.fused_linear_logprob")


def test_bench_vocab_rows(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(flp, "CHUNK_TOKENS", 64)
    rows = bench_vocab("toy", 3001, 512, 16, rep=1)
    assert [r["case"] for r in rows] == ["eager_logprob", "fused_logprob", "eager_ce", "fused_ce"]
    for r in rows[1::2]:
        assert r["workspace_vs_eager"] < 0.5 and r["chunk"] == 64
