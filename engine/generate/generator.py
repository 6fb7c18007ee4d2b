"""Batched generation over the engine's own Transformer, with a preallocated KV cache.

    for completions in generate(model, requests, settings, tokenizer, seed=0):
        ...  # a list of finished samples each time the host checks in

How one rank runs (engine/generate/files.py wraps this in files, shards and resumable outputs):
- The cache (engine/model/attention.py KVCache) has R rows = settings.batch_size x n (fewer when
  memory is short, never more than there are samples) and S slots = the longest prompt +
  max_new_tokens (at most the model's max_seq_len), allocated once, GQA-sized, in the model's
  dtype. Requests are taken longest prompt first, so similar lengths decode together.
- Admission: waiting prompts fill free rows. They are prefilled in length buckets (a forward
  takes prompts within PREFILL_PAD_WASTE of its longest, at most settings.prefill_tokens padded
  tokens), right-padded (causal, so no real token sees padding), and only each prompt's last
  real position goes through the head. A prompt's keys/values are
  copied into each of its samples' rows (n samples share one prefill) and each row's first
  token is sampled from the prompt's logits.
- Decode: every row advances one token per step at its own position. A step is device work
  only (no host sync): sample (engine/generate/sampling.py), record the token in a ring buffer, update
  the done flags (EOS, or the row's budget: max_new_tokens, or the slots left). Every
  `check_every` steps the host reads the ring and the flags (one small copy): it extends each
  sample, looks for stop strings, yields the finished samples, and refills their rows with
  waiting prompts (continuous batching). When nothing waits and at most half the rows are
  busy, the busy rows move to the front and steps run on fewer rows.
- Decode attention reads only what rows use: with flash-attn, each row's own length
  (flash_attn_with_kvcache); on CPU, rows in groups of consecutive rows, each group up to its
  longest row; otherwise up to the longest row.
- CUDA: each decode step replays a CUDA graph captured per (rows, kv block): attention covers
  the slots in use rounded up to a block of 256 (static shapes; all slots with flash-attn),
  optionally torch.compile'd first (settings.compile). CPU never takes graphs or compile: it
  runs the same step eagerly. `Generator` keeps the cache and the graphs for reuse.

Reproducibility: a sample's noise depends only on (seed, dataset, prompt id, sample index) and
the token's index in the sample (engine/generate/sampling.py), so batch size, order, admission time and
rank count do not change it; bitwise equality then needs batch-invariant logits, which fp32 on
CPU gives (tests/generate) and which a GPU's bf16 GEMMs may not (a near-tie can flip).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ie_engine.engine.generate.cuda_graphs import GraphSteps, graph_rows, ring_columns
from ie_engine.engine.generate.sampling import sample_key, sample_next
from ie_engine.engine.model.attention import KVCache
from ie_engine.engine.model.transformer import Transformer

KV_BLOCK = 256  # CUDA graphs: attended slots are rounded up to a multiple of this
SEGMENT_ROWS = 4  # eager decode: rows attend in groups of at least this many, each to its own kv_len
PREFILL_PAD_WASTE = 0.2  # a prefill forward takes prompts no shorter than (1 - this) x its longest


@dataclass
class Request:
    """A prompt to sample from."""
    ids: list[int]
    """The prompt's token ids (BOS first), as the chat template renders it."""
    samples: list[int]
    """The sample indices wanted: range(n), or the ones a resumed run still lacks."""
    key: tuple[str, str]
    """(dataset, prompt id): with the seed and the sample index, what the sample's noise depends on."""
    tag: Any = None
    """The caller's handle, handed back with each Completion."""


@dataclass
class Completion:
    """One finished sample."""
    request: Request
    sample_index: int
    token_ids: list[int]
    """Generated ids; ends with EOS when EOS ended it; up to the end of a stop string when one did."""
    text: str
    """The decoded answer: no EOS, cut before the first stop string."""
    finish_reason: str
    """"stop" (EOS or a stop string) or "length" (max_new_tokens or the model's max_seq_len)."""


@dataclass
class _Rows:
    """Device state of the cache's rows (static buffers: CUDA graphs read and write them)."""
    tokens: torch.Tensor  # (R,) the token each row feeds next
    pos: torch.Tensor     # (R,) the slot (= position) of that token
    gen: torch.Tensor     # (R,) tokens generated so far (also the noise counter)
    budget: torch.Tensor  # (R,) the most tokens this row may generate
    done: torch.Tensor    # (R,) bool
    keys: torch.Tensor    # (R, 2) the samples' noise keys
    ring: torch.Tensor    # (R, K [+ 1 with graphs]) tokens of the steps since the last check (-1 once done)
    col: torch.Tensor     # (1,) the ring's next column

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]


def build_generation_model(checkpoint: str, device: torch.device, dtype: torch.dtype,
                           attn_backend: str = "auto") -> Transformer:
    """A Hugging Face Llama directory as a plain (unsharded) model in eval mode, no gradients."""
    from ie_engine.engine.model.hf_checkpoint import load_hf
    model = load_hf(checkpoint, dtype=dtype, device=device)
    model.cfg = dataclasses.replace(model.cfg, attn_backend=attn_backend)
    return model.eval().requires_grad_(False)


def cache_rows(model: Transformer, settings, slots: int, n: int, samples: int, device: torch.device) -> int:
    """Rows of the KV cache: batch_size x n (n: the most samples a prompt wants), at most
    `samples`, and on CUDA at most what settings.cache_memory_fraction of the free memory
    holds (but never fewer than n)."""
    rows = min(settings.batch_size * n, samples)
    if device.type == "cuda":
        cfg = model.cfg
        elem = next(model.parameters()).element_size()
        per_row = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * slots * elem
        free, _ = torch.cuda.mem_get_info(device)
        fit = int(settings.cache_memory_fraction * free) // per_row
        if fit < n:
            raise RuntimeError(f"the KV cache for {n} rows of {slots} slots needs "
                               f"{n * per_row / 2**30:.1f} GiB but {free / 2**30:.1f} GiB are free; "
                               "lower generate.n or generate.max_new_tokens, or use generate.backend=vllm")
        rows = min(rows, max(fit, n))
    return max(rows, 1)


@torch.inference_mode()
def generate(model: Transformer, requests: list[Request], settings, tokenizer=None, *, seed: int = 0,
             eos_id: int | None = None) -> Iterator[list[Completion]]:
    """Sample every request's wanted samples; yields lists of finished Completions as they
    finish (every host check that finished some), so a caller can write and flush them.

    model: a plain Transformer (not FSDP-wrapped) on its device, in eval mode.
    settings: a GenerateSection (engine/run_config.py): n is read from each request's
      `samples`; temperature, top_p, top_k, max_new_tokens, stop, batch_size, prefill_tokens,
      cache_memory_fraction, check_every, cuda_graphs, compile are used here.
    tokenizer: engine Tokenizer (decode, eos_id) for the texts and stop strings; None gives
      token ids only (text ""; stop strings need a tokenizer).
    eos_id: ends a sample; default tokenizer.eos_id; -1 never stops on a token."""
    requests = [r for r in requests if r.samples]
    if not requests:
        return
    longest = max(len(r.ids) for r in requests)
    if longest >= model.cfg.max_seq_len:
        raise ValueError(f"a prompt of {longest} tokens leaves no room under max_seq_len {model.cfg.max_seq_len}")
    slots = min(longest + settings.max_new_tokens, model.cfg.max_seq_len)
    n = max(len(r.samples) for r in requests)
    rows = cache_rows(model, settings, slots, n, sum(len(r.samples) for r in requests),
                      model.tok_embeddings.weight.device)
    yield from Generator(model, settings, tokenizer, rows=rows, slots=slots, seed=seed, eos_id=eos_id).run(requests)


class Generator:
    """The KV cache (`rows` x `slots`), the rows' device state and, on CUDA, the captured decode
    graphs: `generate` builds one per call; build it yourself to reuse all of that across calls
    (benchmarks, many small jobs). run(requests) is `generate` for requests whose prompts are
    shorter than `slots`; `graphs` (default: settings.cuda_graphs on CUDA, never on CPU)."""

    def __init__(self, model: Transformer, settings, tokenizer=None, *, rows: int, slots: int, seed: int = 0,
                 eos_id: int | None = None, graphs: bool | None = None):
        if eos_id is None:
            eos_id = tokenizer.eos_id if tokenizer is not None else -1
        if settings.stop and tokenizer is None:
            raise ValueError("stop strings need a tokenizer to decode the samples")
        self.model, self.settings, self.tokenizer, self.seed, self.eos_id = model, settings, tokenizer, seed, eos_id
        self.device = device = model.tok_embeddings.weight.device
        cuda = device.type == "cuda"
        graphs = cuda and settings.cuda_graphs if graphs is None else graphs
        self.check_every = settings.check_every or (8 if cuda else 1)
        cfg = model.cfg
        dtype = model.tok_embeddings.weight.dtype
        self.cache = KVCache.allocate(cfg.n_layers, rows, slots, cfg.n_kv_heads, cfg.head_dim, dtype, device)
        self.R, self.S = rows, slots
        z = lambda *shape: torch.zeros(shape, dtype=torch.int64, device=device)  # noqa: E731
        ring = ring_columns(self.check_every) if graphs else self.check_every  # capture's warm-up spills over
        self.st = _Rows(z(rows), z(rows), z(rows), z(rows), torch.ones(rows, dtype=torch.bool, device=device),
                        z(rows, 2), z(rows, ring), z(1))
        # Host bookkeeping per row: who owns it, its tokens so far, an upper bound of its position.
        self.owner: list[tuple[Request, int] | None] = [None] * rows
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.pos_bound = np.zeros(rows, dtype=np.int64)
        self.span = rows  # decode steps run on rows [0, span)
        self.graphs = GraphSteps(self._step, self.st, settings.compile) if graphs else None
        self.stop_margin = 4 * max((len(s) for s in settings.stop), default=0) + 2

    # ------------------------------------------------------------------ the decode step
    def _step(self, rows: int, kv_len: int, segments: tuple = ()) -> None:
        """One token for rows [0, rows): device work only, in place on self.st and the cache."""
        st, s = self.st, self.settings
        tokens, pos, gen, done = st.tokens[:rows], st.pos[:rows], st.gen[:rows], st.done[:rows]
        cache = self.cache.view(rows, kv_len, segments)
        logits = self.model(tokens[:, None], positions=pos[:, None], cache=cache)[:, 0]
        nxt = sample_next(logits, st.keys[:rows], gen, s.temperature, s.top_k, s.top_p)
        live = ~done
        nxt = torch.where(live, nxt, -1)
        st.ring[:rows].scatter_(1, st.col.expand(rows, 1), nxt[:, None])
        st.col.add_(1)
        gen.add_(live)
        pos.add_(live)
        done.logical_or_(live & ((nxt == self.eos_id) | (gen >= st.budget[:rows])))
        tokens.copy_(nxt.clamp(min=0))

    def _kv_len(self) -> int:
        """Slots the next step attends: every slot with flash-attn (it reads each row's own
        length), else the longest row's, rounded up to a block for CUDA graphs."""
        if self.model.attn_backend == "flash":
            return self.S
        kv = int(self.pos_bound[:self.span].max()) + 1
        if self.graphs is not None:
            kv = -(-kv // KV_BLOCK) * KV_BLOCK
        return min(kv, self.S)

    def _segments(self) -> tuple:
        """Eager decode: ((row_end, kv_len), ...) for groups of consecutive rows, so rows shorter
        than the longest read less of the cache (rows are admitted longest first, so neighbours
        have similar lengths). Nothing when there are too few rows to split."""
        span = self.span
        if span < 2 * SEGMENT_ROWS:
            return ()
        size = max(SEGMENT_ROWS, -(-span // 4))
        starts = np.arange(0, span, size)
        kv = np.maximum.reduceat(self.pos_bound[:span], starts) + 1
        return tuple(zip(np.minimum(starts + size, span).tolist(), kv.tolist()))

    # ------------------------------------------------------------------ the loop
    @torch.inference_mode()
    def run(self, requests: list[Request]) -> Iterator[list[Completion]]:
        """Yields lists of finished Completions (see `generate`)."""
        requests = [r for r in requests if r.samples]
        if requests and max(len(r.ids) for r in requests) >= self.S:
            raise ValueError(f"a prompt of {max(len(r.ids) for r in requests)} tokens does not fit {self.S} slots")
        if requests and max(len(r.samples) for r in requests) > self.R:
            raise ValueError(f"a prompt wants {max(len(r.samples) for r in requests)} samples, more than {self.R} rows")
        queue = sorted(requests, key=lambda r: -len(r.ids))  # longest first: memory peaks early
        queue.reverse()  # pop() from the end
        while True:
            if queue:
                self._admit(queue)
            busy = sum(o is not None for o in self.owner[:self.span])
            if busy == 0:
                return
            if not queue and busy <= self.span // 2:
                self._compact()
            for _ in range(self.check_every):
                kv_len = self._kv_len()
                if self.graphs is not None:
                    self.graphs.run(self.span, kv_len)
                else:
                    self._step(self.span, kv_len, self._segments())
                np.minimum(self.pos_bound + 1, self.S - 1, out=self.pos_bound)
            finished = self._check()
            if finished:
                yield finished

    def _admit(self, queue: list[Request]) -> None:
        """Prefill waiting prompts into free rows (several forwards of <= prefill_tokens)."""
        free = [r for r in range(self.R) if self.owner[r] is None]
        while queue and len(queue[-1].samples) <= len(free):
            group, width = [], len(queue[-1].ids)  # the longest waiting prompt sets the padding
            n_rows = 0
            while (queue and n_rows + len(queue[-1].samples) <= len(free)
                   and (not group or ((len(group) + 1) * width <= self.settings.prefill_tokens
                                      and len(queue[-1].ids) >= (1 - PREFILL_PAD_WASTE) * width))):
                group.append(queue.pop())
                n_rows += len(group[-1].samples)
            self._prefill(group, free[:n_rows])
            free = free[n_rows:]
        used = max((r + 1 for r in range(self.R) if self.owner[r] is not None), default=1)
        self.span = used if self.graphs is None else graph_rows(used, self.R)

    def _prefill(self, group: list[Request], dst: list[int]) -> None:
        P, T, dev = len(group), len(group[0].ids), self.device
        ids = torch.zeros(P, T, dtype=torch.int64)
        for i, r in enumerate(group):
            ids[i, :len(r.ids)] = torch.tensor(r.ids)
        last = torch.tensor([len(r.ids) - 1 for r in group], device=dev)

        def head(h, w):  # only each prompt's last real position goes through the head
            return F.linear(h.view(P, T, -1)[torch.arange(P, device=dev), last], w).float()

        cfg = self.model.cfg
        pcache = KVCache.allocate(cfg.n_layers, P, T, cfg.n_kv_heads, cfg.head_dim, self.cache.k[0].dtype, dev)
        logits = self.model(ids.to(dev), cache=pcache, head_fn=head)  # (P, V)
        src = [i for i, r in enumerate(group) for _ in r.samples]
        src_t, dst_t = torch.tensor(src, device=dev), torch.tensor(dst, device=dev)
        self.cache.copy_rows_(pcache, src_t, dst_t)
        keys = torch.tensor([sample_key(self.seed, *r.key, s) for r in group for s in r.samples],
                            dtype=torch.int64, device=dev)
        s = self.settings
        first = sample_next(logits.index_select(0, src_t), keys, torch.zeros(len(src), dtype=torch.int64, device=dev),
                            s.temperature, s.top_k, s.top_p)
        lens = torch.tensor([len(group[i].ids) for i in src], device=dev)
        budget = (self.S - lens).clamp(max=s.max_new_tokens)
        st = self.st
        for t, v in ((st.tokens, first), (st.pos, lens), (st.gen, torch.ones_like(lens)), (st.budget, budget),
                     (st.done, (first == self.eos_id) | (budget <= 1)), (st.keys, keys)):
            t.index_copy_(0, dst_t, v.to(t.dtype))
        first_host = first.tolist()
        samples = [(r, si) for r in group for si in r.samples]
        for j, row in enumerate(dst):
            self.owner[row] = samples[j]
            self.tokens[row] = [first_host[j]]
            self.pos_bound[row] = len(samples[j][0].ids)

    def _compact(self) -> None:
        """Move the busy rows to the front; later steps run on fewer rows."""
        busy = [r for r in range(self.span) if self.owner[r] is not None]
        new_span = len(busy) if self.graphs is None else graph_rows(len(busy), self.R)
        if new_span >= self.span:
            return
        src = torch.tensor(busy, device=self.device)
        dst = torch.arange(len(busy), device=self.device)
        self.cache.move_rows_(src, dst)
        for t in self.st.tensors()[:-1]:  # not the ring column
            t.index_copy_(0, dst, t.index_select(0, src))
        self.st.done[len(busy):self.span] = True
        self.st.pos[len(busy):self.span] = 0
        self.owner[:len(busy)] = [self.owner[r] for r in busy]
        self.tokens[:len(busy)] = [self.tokens[r] for r in busy]
        self.pos_bound[:len(busy)] = self.pos_bound[busy]
        for r in range(len(busy), self.span):
            self.owner[r], self.tokens[r], self.pos_bound[r] = None, [], 0
        self.span = new_span

    def _check(self) -> list[Completion]:
        """The host's look at the device: extend samples, stop strings, hand back finished ones."""
        st, span = self.st, self.span
        steps = int(st.col.item())
        ring = st.ring[:span, :steps].tolist()
        done = st.done[:span].tolist()
        st.col.zero_()
        finished, stopped = [], []
        for r in range(span):
            if self.owner[r] is None:
                continue
            new = [t for t in ring[r] if t >= 0]
            self.tokens[r].extend(new)
            if not done[r] and self.settings.stop and new and self._has_stop(self.tokens[r], len(new)):
                done[r] = True
                stopped.append(r)
            if done[r]:
                request, sample_index = self.owner[r]
                finished.append(self._finish(request, sample_index, self.tokens[r]))
                self.owner[r], self.tokens[r], self.pos_bound[r] = None, [], 0
        if stopped:
            st.done[torch.tensor(stopped, device=self.device)] = True
        return finished

    def _has_stop(self, tokens: list[int], n_new: int) -> bool:
        tail = self.tokenizer.decode(t for t in tokens[-(n_new + self.stop_margin):] if t != self.eos_id)
        return any(s in tail for s in self.settings.stop)

    def _finish(self, request: Request, sample_index: int, tokens: list[int]) -> Completion:
        return Completion(request, sample_index, *finish_sample(tokens, self.tokenizer, self.eos_id, self.settings.stop))


def finish_sample(tokens: list[int], tokenizer, eos_id: int, stop: list[str],
                  stopped: bool | None = None) -> tuple[list[int], str, str]:
    """(token_ids, text, finish_reason) of a finished sample: the text without EOS and cut
    before the first stop string, the tokens up to the end of that stop string (the fewest
    whose text holds it). stopped: the backend's own verdict (vLLM), else EOS decides."""
    ended = tokens[-1:] == [eos_id]
    reason = "stop" if (ended if stopped is None else stopped) else "length"
    body = tokens[:-1] if ended else tokens
    if tokenizer is None:
        return tokens, "", reason
    text = tokenizer.decode(body)
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if cut >= 0:
        lo, hi = 1, len(body)  # binary search: holding a stop string only grows with the prefix
        while lo < hi:
            mid = (lo + hi) // 2
            part = tokenizer.decode(body[:mid])
            lo, hi = (lo, mid) if any(s in part for s in stop) else (mid + 1, hi)
        tokens, text, reason = body[:lo], text[:cut], "stop"
    return tokens, text, reason
