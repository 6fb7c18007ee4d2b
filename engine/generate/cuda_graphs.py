"""The generator's decode step as CUDA graphs (engine/generate/generator.py uses them on CUDA only):
one graph per (rows, attended slots), captured on first use and replayed, all in one memory pool,
with graph batch sizes on a ladder of powers of two so few shapes are captured.
"""
from __future__ import annotations

import torch


def graph_rows(rows: int, cap: int) -> int:
    """CUDA graph batch sizes: powers of two, and the full cache."""
    size = 1
    while size < rows:
        size *= 2
    return min(size, cap)


class GraphSteps:
    """The decode step as CUDA graphs, one per (rows, attended slots), captured on first use.

    Capture needs a warm-up run (lazy initialisation, Triton autotuning, compilation): it runs
    on a side stream and the row state is restored afterwards. The cache needs no restoring:
    the warm-up writes the same keys/values at the same slots that the real steps will write
    before anything reads them. All graphs share one memory pool."""

    def __init__(self, step, st, compile: bool):
        if compile:
            import torch._dynamo
            for name in ("recompile_limit", "cache_size_limit"):  # one compile per graph key
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 256))
            step = torch.compile(step, dynamic=False)
        self.step, self.st = step, st
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def run(self, rows: int, kv_len: int) -> None:
        graph = self.graphs.get((rows, kv_len))
        if graph is None:
            graph = self.graphs[(rows, kv_len)] = self._capture(rows, kv_len)
        graph.replay()

    def _capture(self, rows: int, kv_len: int) -> torch.cuda.CUDAGraph:
        saved = [t.clone() for t in self.st.tensors()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.step(rows, kv_len)
        torch.cuda.current_stream().wait_stream(side)
        for t, s in zip(self.st.tensors(), saved):
            t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.step(rows, kv_len)
        return graph
