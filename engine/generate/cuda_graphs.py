"""The generator's decode step as CUDA graphs (engine/generate/generator.py uses them on CUDA only):
one graph per (rows, attended slots), captured on first use and replayed, all in one memory pool,
with graph batch sizes on a ladder of powers of two so few shapes are captured.
"""
from __future__ import annotations

import torch

WARMUP_STEPS = 2  # eager runs of a step before its capture (lazy init, Triton autotuning, compile)


def ring_columns(check_every: int) -> int:
    """Columns of the generator's token ring: one per step between host checks, plus room for
    the capture's warm-up steps, which run from the current column on (a capture at the last
    column, check_every - 1, writes up to column check_every - 2 + WARMUP_STEPS)."""
    return check_every + WARMUP_STEPS - 1


def graph_rows(rows: int, cap: int) -> int:
    """CUDA graph batch sizes: powers of two, and the full cache."""
    size = 1
    while size < rows:
        size *= 2
    return min(size, cap)


class GraphSteps:
    """The decode step as CUDA graphs, one per (rows, attended slots), captured on first use.

    Capture needs warm-up runs (lazy initialisation, Triton autotuning, compilation): they run
    on a side stream and the row state is restored afterwards. They advance the ring column,
    so the ring has WARMUP_STEPS - 1 spare columns (ring_columns): a capture can come at any
    column, e.g. the last one when a 256-slot block is crossed there. The cache needs no
    restoring: the warm-up writes the same keys/values at the same slots that the real steps
    will write before anything reads them. All graphs share one memory pool."""

    def __init__(self, step, st, compile: bool):
        if compile:
            # (not `import torch._dynamo`: that binds `torch` as a local of this function, and
            # without compile the pool line below then raised UnboundLocalError)
            from torch._dynamo import config as dynamo_config
            for name in ("recompile_limit", "cache_size_limit"):  # one compile per graph key
                if hasattr(dynamo_config, name):
                    setattr(dynamo_config, name, max(getattr(dynamo_config, name), 256))
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
            for _ in range(WARMUP_STEPS):
                self.step(rows, kv_len)
        torch.cuda.current_stream().wait_stream(side)
        for t, s in zip(self.st.tensors(), saved):
            t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.step(rows, kv_len)
        return graph
