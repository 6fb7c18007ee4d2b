"""The CUDA-only paths of generation, as far as a CPU can check them, then on a GPU:

- the CUDA-graph bookkeeping (static shapes: attended slots rounded up to a block, row counts
  from the ladder, compaction onto fewer rows) gives the eager path's samples, with the graph
  runner replaced by one that runs each step eagerly and checks the shapes it is given;
- the real graph runner (GraphSteps) with CUDA's capture emulated on CPU (warm-up steps run,
  the captured step is recorded and run at replay): a capture at the ring's last column (a
  256-slot block crossed there) must not write past the ring (issue 20, finding 7);
- the flash-attn decode path (flash_attn_with_kvcache reading (B, S, Hk, D) views of the cache,
  each row's own length) equals SDPA, with stand-ins built from SDPA;
- on a GPU (marked gpu): bf16 generation with CUDA graphs (and compiled) matches eager, and
  cached decode logits match a full (SDPA) forward.
"""
import contextlib

import pytest
import torch
import torch.nn.functional as F

import ie_engine.engine.generate.generator as gen_mod
import ie_engine.engine.model.transformer as model_mod
from ie_engine.engine.generate.config import GenerateSection
from ie_engine.engine.generate.generator import KV_BLOCK, Generator, Request, generate
from ie_engine.engine.model import attention as attn_mod

from gen_utils import tiny_model
from helpers import sdpa_flash_varlen

pytestmark = pytest.mark.usefixtures("one_thread")
V = 211


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, V, (n,), generator=g).tolist() for n in lengths]


def collect(batches) -> dict:
    return {(c.request.tag, c.sample_index): c.token_ids for b in batches for c in b}


def requests(ps, n):
    return [Request(p, list(range(n)), ("t", str(i)), tag=i) for i, p in enumerate(ps)]


def test_graph_bookkeeping_gives_the_eager_samples(monkeypatch):
    model = tiny_model(V, max_seq_len=512)
    ps = prompts([30, 7, 12, 3, 25, 9, 16, 5, 40, 11], seed=1)
    settings = GenerateSection(temperature=1.0, top_p=0.9, max_new_tokens=20, batch_size=3, check_every=4)
    want = collect(generate(model, requests(ps, 2), settings, eos_id=17))
    seen = []

    class EagerGraphs:  # the graph runner's contract, without CUDA
        def __init__(self, step, st, compile):
            self.step = step

        def run(self, rows, kv_len):
            seen.append((rows, kv_len))
            assert rows & (rows - 1) == 0 or rows == 6  # a power of two, or the whole cache
            assert kv_len % KV_BLOCK == 0 or kv_len == slots
            self.step(rows, kv_len)

    monkeypatch.setattr(gen_mod, "GraphSteps", EagerGraphs)
    slots = max(map(len, ps)) + 20
    g = Generator(model, settings, rows=6, slots=slots, eos_id=17, graphs=True)
    got = collect(g.run(requests(ps, 2)))
    assert collect(g.run(requests(ps, 2))) == want  # reused: same cache, same graphs
    assert got == want
    assert {r for r, _ in seen} >= {6} and min(r for r, _ in seen) < 6  # compaction ran on fewer rows


class FakeCapture:
    """torch.cuda's stream and graph calls as GraphSteps uses them, on CPU: streams do nothing,
    and a step called under `torch.cuda.graph(...)` is recorded, not run (CUDA capture runs
    nothing either), then run at each replay."""

    def __init__(self, monkeypatch, graphs):
        self.capturing, real_step = [], graphs.step

        def step(rows, kv_len):
            if self.capturing:
                self.capturing[-1].calls.append((rows, kv_len))
            else:
                real_step(rows, kv_len)

        class Graph:
            def __init__(self):
                self.calls = []

            def replay(self):
                for args in self.calls:
                    real_step(*args)

        class Stream:
            def wait_stream(self, other):
                pass

        @contextlib.contextmanager
        def graph(g, pool=None, **kw):
            self.capturing.append(g)
            yield
            self.capturing.pop()

        graphs.step = step
        for name, value in (("CUDAGraph", Graph), ("graph", graph), ("Stream", Stream),
                            ("stream", lambda s: contextlib.nullcontext()), ("current_stream", Stream)):
            monkeypatch.setattr(torch.cuda, name, value)


def test_graph_capture_at_the_rings_last_column(monkeypatch):
    """201-token prompt, 128 new tokens, check_every 8: the step that first attends 512 slots
    (position 256 = 55 steps in) is the 8th of its check, ring column 7; capture's two warm-up
    steps write columns 7 and 8. The samples must equal eager generation's."""
    model = tiny_model(V, max_seq_len=512)
    (p,) = prompts([201], seed=6)
    settings = GenerateSection(temperature=1.0, top_k=20, max_new_tokens=128, batch_size=1, check_every=8)
    want = collect(generate(model, requests([p], 1), settings, eos_id=-1))
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    g = Generator(model, settings, rows=1, slots=len(p) + 128, eos_id=-1, graphs=True)
    FakeCapture(monkeypatch, g.graphs)
    got = collect(g.run(requests([p], 1)))
    assert got == want
    assert set(g.graphs.graphs) == {(1, KV_BLOCK), (1, len(p) + 128)}  # one capture per block


def sdpa_with_kvcache(q, k_cache, v_cache, cache_seqlens, causal=False):
    """flash_attn_with_kvcache from SDPA: q (B, 1, Hq, D) over k/v_cache (B, S, Hk, D) views,
    row b reading slots [0, cache_seqlens[b])."""
    assert q.shape[1] == 1 and not causal and k_cache.stride(-1) == 1
    S = k_cache.shape[1]
    mask = (torch.arange(S) < cache_seqlens[:, None].long())[:, None, None]  # (B, 1, 1, S)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2),
                                         attn_mask=mask, enable_gqa=q.shape[2] != k_cache.shape[2])
    return out.transpose(1, 2)


def test_flash_decode_path_equals_sdpa(monkeypatch):
    model = tiny_model(V, max_seq_len=128)
    ps = prompts([9, 21, 4, 13], seed=2)
    settings = GenerateSection(max_new_tokens=16, batch_size=4)
    want = collect(generate(model, requests(ps, 1), settings, eos_id=-1))
    monkeypatch.setattr(attn_mod, "flash_attn_varlen_func", sdpa_flash_varlen)
    monkeypatch.setattr(attn_mod, "flash_attn_with_kvcache", sdpa_with_kvcache)
    model.attn_backend = "flash"
    calls = []
    real = attn_mod.build_cache_mask

    def spy(backend, positions, cache):
        mask = real(backend, positions, cache)
        calls.append(mask.cache_seqlens is not None and mask.dense is None and cache.kv_len == cache.k[0].shape[2])
        return mask

    monkeypatch.setattr(model_mod, "build_cache_mask", spy)
    got = collect(generate(model, requests(ps, 1), settings, eos_id=-1))
    assert got == want and calls and all(calls)


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graphs_match_eager_in_bf16(compile):
    """Graphs alone: admissions, EOS, compaction, several graph keys. Compiled: one graph key
    (every row admitted at once, none stopping early), since each key is a compile of its own."""
    model = tiny_model(V, max_seq_len=512, dim=128, n_layers=3).cuda().to(torch.bfloat16)
    model.init_rope()
    ps = prompts([30, 7, 12, 3, 25, 9, 16, 5], seed=3)
    base = dict(temperature=1.0, top_k=40, max_new_tokens=48, batch_size=3)
    n, eos = 2, 17
    if compile:
        base, n, eos = {**base, "batch_size": len(ps)}, 1, -1
    eager = collect(generate(model, requests(ps, n), GenerateSection(cuda_graphs=False, **base), eos_id=eos))
    graphs = collect(generate(model, requests(ps, n), GenerateSection(compile=compile, **base), eos_id=eos))
    same = sum(eager[k] == graphs[k] for k in eager) / len(eager)
    assert same >= 0.75, same  # bf16: another attended length may round a near-tie the other way


@pytest.mark.gpu
def test_cuda_cached_decode_matches_a_full_forward():
    model = tiny_model(V, max_seq_len=128, dim=128).cuda().to(torch.bfloat16)
    model.init_rope()
    # The full forwards below are references at 24 lengths: SDPA, not FlexAttention, which is
    # compiled with static shapes and would compile 24 times (past dynamo's recompile limit).
    model.attn_backend = "sdpa"
    cfg = model.cfg
    ps = prompts([5, 17, 11], seed=4)
    cont = prompts([8, 8, 8], seed=5)
    B, T = len(ps), max(map(len, ps))
    cache = attn_mod.KVCache.allocate(cfg.n_layers, B, T + 8, cfg.n_kv_heads, cfg.head_dim, torch.bfloat16, "cuda")
    ids = torch.zeros(B, T, dtype=torch.long)
    for i, p in enumerate(ps):
        ids[i, :len(p)] = torch.tensor(p)
    lens = torch.tensor([len(p) for p in ps], device="cuda")
    with torch.no_grad():
        model(ids.cuda(), cache=cache)
        for t in range(8):
            step = torch.tensor([c[t] for c in cont], device="cuda")[:, None]
            got = model(step, positions=(lens + t)[:, None], cache=cache.view(B, T + 8))[:, 0]
            for i in range(B):
                full = model(torch.tensor([ps[i] + cont[i][:t + 1]], device="cuda"))[0, -1]
                assert ((got[i] - full).norm() / full.norm()).item() < 2e-2
