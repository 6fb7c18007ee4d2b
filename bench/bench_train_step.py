"""Benchmark: one optimizer step (forward + backward + AdamW) of SFT and DPO, ours vs the baselines.

    python -m ie_engine.bench.bench_train_step                          # CPU: the debug preset
    python -m ie_engine.bench.bench_train_step --device cuda --preset llama2-1b llama2-7b-4l

What one step is: `ie_engine.engine.train.step.train_step` (gradient clipping, AdamW, LR scheduler, zero_grad)
around each case's loss, over the micro-batches of one fixed set of examples. Every case runs
the same examples on the same weights (lr = 0, so AdamW does all its arithmetic but the weights,
and with them the losses and gradient norms, stay comparable across cases: the suite checks that
every SFT case gives the same loss and gradient norm, and every DPO case too).

Data: a few hundred synthetic ADELIE-like conversations (bench/bench_prepare.py's generator:
zero-shot IE, few-shot multi-turn IE, on-demand IE tables; no dataset is downloaded), tokenized
with the Tulu template by data/prepare.py with a 4096-piece BPE trained on the same synthetic
text (presets with a larger vocabulary use only its first 4096 ids; the head's cost depends on
the vocabulary size, not on which ids occur). ADELIE's conversations are mostly 100-800 tokens
at seq_len 2048; the CPU presets shorten them (`scale` 0.1: mostly ~95-380 tokens, median ~150)
and use seq_len 512, about ADELIE's shape at a quarter of the row length and half the document
length. The measured length percentiles are in the summary row.

SFT cases (the examples of `rows` packed rows of the SFT token cache):
  ours_fused_packed     packed rows (TokenCache.batch: doc_ids, positions), ie_engine.engine.train.losses.sft_loss
                        (fused linear cross-entropy: the (N, V) logits never exist)
  ours_logits_packed    the same rows, model(...) -> (B, T, V) fp32 logits -> F.cross_entropy(sum) / n
  ours_fsdp_packed      ours_fused_packed as the recipes run it: built on meta, FSDP2 (engine/parallel.py)
                        on a 1-process group, so its all-gathers and reduce-scatters run; on CUDA
                        mixed precision bf16 (fp32 master weights and AdamW state, bf16 compute,
                        fp32 gradient reduction), on CPU fp32
  ours_fused_padded     the same examples, one per row, in micro-batches of --padded-batch examples
                        in a seeded random order, each padded to its longest (ADELIE's trainer); on
                        CUDA rounded up to a multiple of PAD_MULTIPLE (256): FlexAttention compiles
                        with static shapes, and six lengths would be six compiles
  hf_padded             transformers LlamaForCausalLM (same config and weights, handed over in memory), the
                        same padded micro-batches, its own cross-entropy (labels=, with
                        num_items_in_batch so the normalisation equals ours)
DPO cases (the pairs of `rows` packed rows of the DPO token cache; reference log-probs are
cached for every case, from a second model with another seed, as dpo.reference=cached does):
  ours_dpo_packed       ie_engine.engine.train.losses.preference_loss: fused log-probs -> per-sequence sums -> fused DPO loss
  trl_logits_padded     the same pairs as one padded batch [chosen..., rejected...] (TRL's
                        concatenated forward) -> HF logits -> trl.trainer.utils.selective_log_softmax
                        -> masked sums -> TRL's sigmoid loss. This is TRL's DPO up to 0.2x, which
                        ADELIE trained with (its metric side outputs are left out). Without trl
                        installed (the GPU image) selective_log_softmax is written here by its
                        definition, one sequence at a time as TRL computes it; the row says which.
  trl_fused_padded      installed TRL's own DPOTrainer._compute_loss (TRL >= 1.0) on the same padded
                        batch, with trl.trainer.utils.add_fused_lm_head (TRL's chunked head, with
                        the outputs DPOTrainer asks for), called on a stand-in trainer object.

A case whose package is missing (transformers: hf_padded and both TRL cases; trl: trl_fused_padded)
is not run and is listed in the summary row's `not_run`; every other case runs.
The reference log-probs are one no-grad pass of the reference model through SDPA (on CUDA
FlexAttention would compile a forward-only graph for it, once more).
Reported per case: real (non-pad) tokens/s, MFU, extra peak memory of the step, pad fraction.
  MFU = ie_engine.engine.log.step_flops(...) / step time / peak, where step_flops = 6 * P * real tokens
  + 12 * n_layers * dim * sum_d L_d (L_d + 1) / 2 (P = parameters outside the embedding; the
  attention term counts each document's causal pairs only), the same formula the training loop
  logs. Peak: on CUDA ie_engine.engine.log.device_peak_flops (bf16 data sheet); on CPU a measured fp32
  1024^3 matmul rate (ie_engine.engine.log.measure_matmul_flops), re-measured in every timing round and
  taken as the median, so load from other processes lowers both sides of the fraction.
  Peak memory: extra bytes over what was resident before the step (weights, AdamW state and
  data are already there; gradients are None, so they count): CPU bench.common.measure_peak_cpu
  (the process's VmHWM) in a fresh process per case that builds only that case's model and data;
  CUDA bench.common.measure_peak_gpu (max_memory_allocated).
Precision: CPU fp32. CUDA: bf16 parameters (and so bf16 gradients and AdamW state) for every
  case but ours_fsdp_packed, no autocast; this is the engine's parallel.mixed_precision=pure_bf16
  without FSDP. ours_fsdp_packed is the recipes' default (bf16 mixed under FSDP2); both MFUs are
  reported, and the target is the recipes' path's.
Timing: CPU wall clock, cases round robin, median of --rep, 1 thread by default (--threads);
  CUDA do_bench (median over --rep seconds of repetitions).
Targets (benchmarks, not tests): CPU SFT ours_fused_packed >= 1.5x hf_padded real tokens/s;
DPO ours_dpo_packed extra peak <= 0.5x TRL's. GPU: SFT MFU >= 45% (bench.common.MFU_TARGET;
ours_fsdp_packed, llama2-1b); DPO >= 1.5x TRL's tokens/s. Rows are appended to bench/results/train_step.jsonl (one per case, plus a
summary row with the ratios); `python -m ie_engine.bench.plot` draws the latest run.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import types
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ie_engine.bench.common import (
    DPO_VS_TRL_TARGET,
    MFU_TARGET,
    REPO_ROOT,
    append_results,
    hf_attn_implementation,
    measure_peak_cpu,
    measure_peak_gpu,
    print_table,
    time_cpu,
    time_gpu,
)
from ie_engine.engine import log
from ie_engine.engine.model.config import PRESETS as MODEL_PRESETS
from ie_engine.engine.model.config import ModelConfig, RopeScaling
from ie_engine.engine.model.hf_checkpoint import to_transformers
from ie_engine.engine.model.transformer import build_model
from ie_engine.engine.run_config import DPOSection, OptimConfig, ParallelConfig
from ie_engine.engine.train.batching import to_device
from ie_engine.engine.train.losses import preference_loss, score_documents, sft_loss
from ie_engine.engine.train.optim import build_optimizer, build_scheduler
from ie_engine.engine.train.step import train_step

IGNORE = -100
BETA = 0.1
TOKENIZER_VOCAB = 4096
PAD_MULTIPLE = 256  # CUDA: padded micro-batches are rounded up to this (a few compiled shapes, not one per batch)


@dataclass
class BenchPreset:
    model: ModelConfig
    """Model sizes."""
    seq_len: int
    """Packed row length."""
    rows: int
    """Packed rows per step (SFT and DPO): the step's examples are the documents of these rows."""
    scale: float
    """Length scale of the synthetic conversations (1.0: ADELIE's mostly 100-800 tokens)."""
    n_sft: int = 256
    """Synthetic SFT conversations in the cache the step's rows are drawn from."""
    n_pairs: int = 192
    """Synthetic DPO pairs in the cache."""


PRESETS: dict[str, BenchPreset] = {
    # CPU: the engine's debug model (GQA, 4 layers, dim 256, vocab 4096), fp32.
    "debug": BenchPreset(MODEL_PRESETS["debug"], seq_len=512, rows=8, scale=0.1),
    # CPU, the debug widths with Llama-2's 32000 vocabulary: the head is ~3/4 of the matmul FLOPs.
    "debug-32k": BenchPreset(dataclasses.replace(MODEL_PRESETS["debug"], vocab_size=32000),
                             seq_len=512, rows=8, scale=0.1),
    # CPU, a Llama-3.2-shaped small model: debug's widths with Llama-3's 128,256-id vocabulary,
    # tied head, RoPE theta 500,000 and Llama-3 frequency scaling (the DPO step vs TRL, issue 14).
    "llama3-tiny-128k": BenchPreset(dataclasses.replace(MODEL_PRESETS["debug"], vocab_size=128256, rope_theta=500000.0,
                                                        rope_scaling=RopeScaling(factor=32.0), tie_embeddings=True),
                                    seq_len=512, rows=8, scale=0.1),
    # A tiny model for the pytest-benchmark view (seconds per case on 2 cores).
    "tiny": BenchPreset(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=TOKENIZER_VOCAB,
                                    multiple_of=32, max_seq_len=256), seq_len=256, rows=2, scale=0.15,
                        n_sft=64, n_pairs=48),
    # GPU (bf16): the 1B-class config and 7B-width layer stacks that fit one 80 GB GPU with AdamW.
    "llama2-1b": BenchPreset(MODEL_PRESETS["llama2-1b"], seq_len=2048, rows=8, scale=1.0, n_sft=512, n_pairs=384),
    "llama2-7b-4l": BenchPreset(dataclasses.replace(MODEL_PRESETS["llama2-7b"], n_layers=4), seq_len=2048,
                                rows=4, scale=1.0, n_sft=512, n_pairs=384),
    "llama2-7b-8l": BenchPreset(dataclasses.replace(MODEL_PRESETS["llama2-7b"], n_layers=8), seq_len=2048,
                                rows=4, scale=1.0, n_sft=512, n_pairs=384),
}
SFT_CASES = ("ours_fused_packed", "ours_fsdp_packed", "ours_logits_packed", "ours_fused_padded", "hf_padded")
DPO_CASES = ("ours_dpo_packed", "trl_logits_padded", "trl_fused_padded")
NEEDS = {"hf_padded": ("transformers",), "trl_logits_padded": ("transformers",),
         "trl_fused_padded": ("transformers", "trl")}  # packages a baseline cannot run without


# ----------------------------------------------------------------------------- data

def build_caches(preset: BenchPreset, work: str) -> tuple:
    """Synthetic SFT + DPO JSONL, a tokenizer, and their token caches (built once under work)."""
    from ie_engine.bench.bench_prepare import TextSource, synthetic_dpo, synthetic_sft, write_jsonl
    from ie_engine.data.cache import TokenCache
    from ie_engine.data.prepare import prepare
    from ie_engine.data.tokenizer import train_tokenizer

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    def source(draws_seed: int) -> TextSource:  # one "language" (seed 0), fresh text draws per use
        src = TextSource(0, n_types=50_000, n_sentences=20_000)
        src.rnd.seed(draws_seed)
        return src

    tok = work / f"bpe{TOKENIZER_VOCAB}.model"
    if not tok.exists():
        texts = (m["content"] for r in synthetic_sft(3000, 100, 1.0, source(100)) for m in r["messages"])
        train_tokenizer(texts, TOKENIZER_VOCAB, tok)
    sft, dpo = work / f"sft_{preset.n_sft}_s{preset.scale}.jsonl", work / f"dpo_{preset.n_pairs}_s{preset.scale}.jsonl"
    if not sft.exists():  # a fixed function of the seeds, written once (so the caches are reused)
        write_jsonl(synthetic_sft(preset.n_sft, 0, preset.scale, source(0)), sft)
    if not dpo.exists():
        write_jsonl(synthetic_dpo(preset.n_pairs, 1, preset.scale, source(1)), dpo)
    caches = []
    for kind, path in (("sft", sft), ("dpo", dpo)):
        out = prepare(kind, str(path), str(tok), preset.seq_len, str(work / f"cache_{path.stem}_T{preset.seq_len}"),
                      workers=1, progress=False)
        caches.append(TokenCache(out))
    if caches[0].vocab_size > preset.model.vocab_size:
        raise ValueError(f"tokenizer vocab {caches[0].vocab_size} > model vocab {preset.model.vocab_size}")
    return caches


def pick_rows(cache, n: int, seed: int) -> np.ndarray:
    """n distinct rows, seeded: the packer's row order is by fill, not a sample."""
    if cache.num_rows < n:
        raise ValueError(f"{cache.path}: {cache.num_rows} rows, the step needs {n}")
    return np.sort(np.random.default_rng(seed).permutation(cache.num_rows)[:n])


def row_documents(cache, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, target_mask) of every document in these rows, in the order cache.batch numbers them."""
    return [cache.document(d) for r in rows.tolist()
            for d in range(int(cache.row_docs[r]), int(cache.row_docs[r + 1]))]


def padded_batch(docs: list[tuple[np.ndarray, np.ndarray]], pad_id: int, multiple: int = 1) -> dict:
    """One example per row, right-padded to the longest (rounded up to `multiple`). Carries both label conventions:
    labels (ours, pre-shifted: labels[t] = ids[t+1] when t+1 is a target) and hf_labels
    (transformers / TRL: hf_labels[t] = ids[t] when t is a target; they shift inside), plus
    attention_mask, completion_mask (= target mask, TRL's name) and doc_ids (row i -> i, pad -1:
    only for counting tokens and FLOPs)."""
    B, L = len(docs), max(len(ids) for ids, _ in docs)
    L = -(-L // multiple) * multiple
    out = {k: torch.full((B, L), v, dtype=torch.long) for k, v in
           (("input_ids", pad_id), ("labels", IGNORE), ("hf_labels", IGNORE), ("attention_mask", 0),
            ("completion_mask", 0), ("doc_ids", -1))}
    for i, (ids, tgt) in enumerate(docs):
        n = len(ids)
        ids_t, tgt_t = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(tgt)
        lab = torch.full((n,), IGNORE, dtype=torch.long)
        lab[:-1] = torch.where(tgt_t[1:], ids_t[1:], IGNORE)
        out["input_ids"][i, :n] = ids_t
        out["labels"][i, :n] = lab
        out["hf_labels"][i, :n] = torch.where(tgt_t, ids_t, IGNORE)
        out["attention_mask"][i, :n] = 1
        out["completion_mask"][i, :n] = tgt_t.long()
        out["doc_ids"][i, :n] = i
    return out


def real_tokens(batches: list[dict]) -> int:
    return sum(int((b["doc_ids"] >= 0).sum()) for b in batches)


def valid_targets(batches: list[dict]) -> int:
    return sum(int((b["labels"] != IGNORE).sum()) for b in batches)


# ----------------------------------------------------------------------------- models

def build_ours(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int):
    model = build_model(cfg, "meta")
    model.to_empty(device=device)
    model.init_weights(seed)
    model.to(dtype)
    model.init_rope()  # the cast rounded the fp32 RoPE tables
    return model.train()


def build_fsdp(cfg: ModelConfig, device: torch.device, seed: int):
    """The recipes' model: on meta, FSDP2 over a 1-process group (engine/parallel.py, as
    engine/train/model_setup.py builds it), materialised from the same seed as build_ours; bf16
    mixed precision on CUDA, fp32 on CPU."""
    from ie_engine.engine import parallel

    world = parallel.init_distributed(device_type=device.type)
    pcfg = ParallelConfig(mixed_precision="bf16" if device.type == "cuda" else "fp32")
    model = parallel.parallelize(build_model(cfg, "meta"), pcfg, world)
    parallel.materialize(model, world, pcfg, seed)
    return model.train()


def build_hf(model, dtype: torch.dtype, device: torch.device):
    """transformers' LlamaForCausalLM with our model's config and weights (handed over in memory:
    the tensors of the engine's own export, save_hf), SDPA attention (flash-attn 2 on CUDA when
    installed)."""
    return to_transformers(model, dtype, hf_attn_implementation(device)).train()


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------- losses

def logits_ce_loss(model, batch: dict, num_valid: torch.Tensor):
    """The unfused head: (B, T, V) fp32 logits, then cross-entropy summed / the step's count."""
    logits = model(batch["input_ids"], batch.get("positions"), batch.get("doc_ids"))  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE, reduction="sum")
    return loss / num_valid, {}


def padded_sft_loss(model, batch: dict, num_valid: torch.Tensor):
    """Ours on right-padded rows: plain causal attention (pads come after every real token)."""
    return sft_loss(model, {"input_ids": batch["input_ids"], "labels": batch["labels"]}, num_valid)


def hf_sft_loss(hf, batch: dict, num_valid: torch.Tensor):
    out = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["hf_labels"],
             num_items_in_batch=num_valid, use_cache=False)
    return out.loss, {}


def selective_log_softmax_by_definition(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """TRL's selective_log_softmax by its definition, log_softmax(logits)[..., index], computed
    one sequence at a time as TRL does (so only one sequence's (T, V) log-softmax is live at
    once): logits (B, T, V), index (B, T) -> (B, T) in the logits' dtype."""
    return torch.stack([F.log_softmax(row, dim=-1).gather(-1, idx[:, None])[:, 0] for row, idx in zip(logits, index)])


def selective_log_softmax():
    """TRL's own when trl is installed, else the same computation written here."""
    if have("trl"):
        from trl.trainer.utils import selective_log_softmax as trl_selective_log_softmax
        return trl_selective_log_softmax
    return selective_log_softmax_by_definition


def trl_logits_dpo_loss(hf, batch: dict, num_pairs: torch.Tensor):
    """TRL's concatenated forward before its fused head (TRL <= 0.2x, what ADELIE ran): full
    logits, TRL's selective_log_softmax on the completion tokens, summed per sequence, then
    TRL's sigmoid loss -logsigmoid(beta * ((pc - rc) - (pr - rr)))."""
    logits = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    labels = batch["input_ids"][:, 1:]                                      # (2P, T-1)
    mask = batch["completion_mask"][:, 1:].bool()
    per_token = selective_log_softmax()(logits[:, :-1], labels.masked_fill(~mask, 0))  # (2P, T-1)
    logps = (per_token * mask).sum(-1)                                      # (2P,)
    chosen, rejected = logps.chunk(2)
    logits_dpo = (chosen - batch["ref_chosen_logps"]) - (rejected - batch["ref_rejected_logps"])
    losses = -F.logsigmoid(BETA * logits_dpo)
    return losses.sum() / num_pairs, {}


def trl_fused_dpo_loss(hf, batch: dict, num_pairs: torch.Tensor):
    """Installed TRL's DPOTrainer._compute_loss (sigmoid, precomputed reference log-probs) on a
    stand-in trainer: the model must already carry add_fused_lm_head (see build_cases)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    identity = lambda t: t  # noqa: E731
    trainer = types.SimpleNamespace(
        model=hf, accelerator=types.SimpleNamespace(device=batch["input_ids"].device, gather=identity,
                                                    gather_for_metrics=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=["sigmoid"], loss_weights=[1.0], beta=BETA, label_smoothing=0.0, use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask", "ref_chosen_logps",
                                    "ref_rejected_logps")}
    mean = DPOTrainer._compute_loss(trainer, hf, inputs, return_outputs=False)  # mean over this batch's pairs
    return mean * (batch["input_ids"].shape[0] // 2) / num_pairs, {}


# ----------------------------------------------------------------------------- cases

@dataclass
class Case:
    name: str
    task: str                       # "sft" or "dpo"
    impl: str                       # "ours", "transformers", "trl"
    layout: str                     # "packed" or "padded"
    head: str                       # "fused" or "logits"
    run: Callable[[], dict]         # one optimizer step -> train_step's floats
    batches: list[dict]             # the step's micro-batches (for tokens and FLOPs)
    precision: str = "plain"        # "plain": parameters in the step's dtype; "fsdp_mixed": FSDP2, fp32 master


def build_cases(preset: BenchPreset, device: torch.device, dtype: torch.dtype, work: str, padded_per_batch: int,
                only: list[str] | None = None, seed: int = 0) -> tuple[list[Case], dict]:
    """Models, data and one step closure per case; also returns facts about the data."""
    sft_cache, dpo_cache = build_caches(preset, work)
    cfg = dataclasses.replace(preset.model, max_seq_len=max(preset.model.max_seq_len, preset.seq_len))
    selected = lambda name: not only or any(o in name for o in only)  # noqa: E731
    missing = {name: [m for m in NEEDS.get(name, ()) if not have(m)] for name in SFT_CASES + DPO_CASES}
    wanted = lambda name: selected(name) and not missing[name]  # noqa: E731
    not_run = {name: ", ".join(m) + " not installed" for name, m in missing.items() if m and selected(name)}
    ours = build_ours(cfg, device, dtype, seed)
    need_hf = any(wanted(c) for c in ("hf_padded", "trl_logits_padded", "trl_fused_padded"))
    hf = build_hf(ours, dtype, device) if need_hf else None
    fsdp = build_fsdp(cfg, device, seed) if wanted("ours_fsdp_packed") else None
    optim_cfg = OptimConfig(lr=0.0, schedule="constant", warmup_ratio=0.0)  # full AdamW work, frozen weights

    optimizers = {}  # one AdamW per model, shared by its cases (one state in memory, not one per case)

    def stepper(model, loss_fn, count_fn, batches):
        if id(model) not in optimizers:
            opt = build_optimizer(model, optim_cfg)
            optimizers[id(model)] = (opt, build_scheduler(opt, optim_cfg, total_steps=10**6))
        opt, sched = optimizers[id(model)]
        return lambda: train_step(model, opt, sched, batches, loss_fn, count_fn, optim_cfg.max_grad_norm)

    count_valid = lambda b: int((b["labels"] != IGNORE).sum())  # noqa: E731
    cases: list[Case] = []

    # SFT: the examples of `rows` packed rows, packed and padded.
    rows = pick_rows(sft_cache, preset.rows, seed)
    packed = [to_device(sft_cache.batch(rows), device)]
    docs = row_documents(sft_cache, rows)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)  # ADELIE's loader: random order, no length grouping
    multiple = PAD_MULTIPLE if device.type == "cuda" else 1
    padded = [to_device(padded_batch([docs[j] for j in order[i:i + padded_per_batch]], sft_cache.pad_id, multiple),
                        device) for i in range(0, len(order), padded_per_batch)]
    assert real_tokens(packed) == real_tokens(padded) and valid_targets(packed) == valid_targets(padded)
    for name, model, loss_fn, batches, impl, layout, head in (
            ("ours_fused_packed", ours, sft_loss, packed, "ours", "packed", "fused"),
            ("ours_fsdp_packed", fsdp, sft_loss, packed, "ours", "packed", "fused"),
            ("ours_logits_packed", ours, logits_ce_loss, packed, "ours", "packed", "logits"),
            ("ours_fused_padded", ours, padded_sft_loss, padded, "ours", "padded", "fused"),
            ("hf_padded", hf, hf_sft_loss, padded, "transformers", "padded", "logits")):
        if wanted(name):
            cases.append(Case(name, "sft", impl, layout, head, stepper(model, loss_fn, count_valid, batches), batches,
                              "fsdp_mixed" if model is fsdp else "plain"))

    # DPO: the pairs of `rows` packed rows; cached reference log-probs from another model.
    dpo_rows = pick_rows(dpo_cache, preset.rows, seed + 1)
    dpo_packed = to_device(dpo_cache.batch(dpo_rows), device)
    ref_model = build_ours(cfg, device, dtype, seed + 1)
    ref_model.attn_backend = "sdpa"  # one no-grad pass: not worth a FlexAttention compile of its own
    with torch.no_grad():
        ref = score_documents(ref_model, dpo_packed).float()  # (2P,) chosen, rejected interleaved
    del ref_model
    dpo_packed["ref_logps"] = ref
    pair_docs = row_documents(dpo_cache, dpo_rows)
    trl_batch = padded_batch(pair_docs[0::2] + pair_docs[1::2], dpo_cache.pad_id)  # [chosen..., rejected...]
    trl_batch = to_device(trl_batch, device)
    trl_batch["ref_chosen_logps"], trl_batch["ref_rejected_logps"] = ref[0::2], ref[1::2]
    assert real_tokens([dpo_packed]) == real_tokens([trl_batch])
    count_pairs = lambda b: b["num_docs"] // 2 if "num_docs" in b else b["input_ids"].shape[0] // 2  # noqa: E731

    def ours_dpo(model, batch, num_pairs):
        return preference_loss(model, batch, num_pairs, DPOSection(beta=BETA))

    if wanted("trl_fused_padded"):
        from trl.trainer.utils import add_fused_lm_head
        # DPOTrainer's own call; without fused_lm_head=True the patched forward is the original
        add_fused_lm_head(hf, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    for name, model, loss_fn, batch, impl, layout, head in (
            ("ours_dpo_packed", ours, ours_dpo, dpo_packed, "ours", "packed", "fused"),
            ("trl_logits_padded", hf, trl_logits_dpo_loss, trl_batch, "trl", "padded", "logits"),
            ("trl_fused_padded", hf, trl_fused_dpo_loss, trl_batch, "trl", "padded", "fused")):
        if wanted(name):
            cases.append(Case(name, "dpo", impl, layout, head, stepper(model, loss_fn, count_pairs, [batch]), [batch]))

    lens = np.diff(sft_cache.doc_offsets)
    facts = {"sft_len_p10_p50_p90": [int(np.percentile(lens, q)) for q in (10, 50, 90)],
             "sft_examples": len(docs), "dpo_pairs": len(pair_docs) // 2,
             "matmul_params": log.matmul_params(ours), "n_params": ours.num_params(),
             "padded_lengths": sorted({int(b["input_ids"].shape[1]) for b in padded}),
             "not_run": not_run, "trl_log_softmax": "trl" if have("trl") else "by definition (trl not installed)",
             "model_cfg": cfg}
    return cases, facts


# ----------------------------------------------------------------------------- measuring

def measure(cases: list[Case], device: torch.device, rep: int, cpu_peak: Callable[[str], float]
            ) -> tuple[dict, dict, dict, float]:
    """Warm up every case (the first AdamW step allocates its state), take each case's extra
    peak memory of one step (CPU: cpu_peak(name), a fresh process per case), then rep timing
    rounds (CPU: round robin, each round with a peak-FLOPs probe)."""
    first = {c.name: c.run() for c in cases}  # warm-up; its losses / grad norms are the cross-check
    if device.type == "cuda":
        peaks = {c.name: measure_peak_gpu(c.run) / 2**20 for c in cases}
    else:
        peaks = {c.name: cpu_peak(c.name) for c in cases}
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    if device.type == "cuda":
        for c in cases:
            times[c.name].append(time_gpu(c.run, warmup=500, rep=max(1000, 1000 * rep)))
        peak_flops = log.device_peak_flops(device)
    else:
        probes = []
        for _ in range(rep):  # load from other processes hits every case (and the peak) alike
            probes.append(log.measure_matmul_flops(device))
            for c in cases:
                times[c.name].append(time_cpu(c.run, warmup=0, rep=1))
        peak_flops = statistics.median(probes)
    return first, peaks, {k: statistics.median(v) for k, v in times.items()}, peak_flops


def cpu_peak_in_subprocess(preset: str, case: str, args) -> float:
    """Extra peak RSS (MiB) of one step of one case, measured in a fresh process that builds
    only that case: no other case's models, tensors or heap fragments share the measurement."""
    cmd = [sys.executable, "-m", "ie_engine.bench.bench_train_step", "--device", "cpu", "--preset", preset,
           "--peak-of", case, "--threads", str(args.threads), "--padded-batch", str(args.padded_batch),
           "--work", args.work]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT,
                         env={**os.environ, "TRITON_INTERPRET": "0"})
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_peak_MiB"]


def peak_of(preset: str, case: str, args) -> None:
    """The child side of cpu_peak_in_subprocess: prints {"extra_peak_MiB": ...}."""
    cases, _ = build_cases(PRESETS[preset], torch.device("cpu"), torch.float32, args.work, args.padded_batch, [case])
    (c,) = [c for c in cases if c.name == case]
    c.run()  # AdamW state, as in the parent's warm-up
    print(json.dumps({"extra_peak_MiB": measure_peak_cpu(c.run) / 2**20}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def check_agreement(cases: list[Case], first: dict, rtol: float) -> list[str]:
    """Every SFT case must give the same loss and gradient norm (same examples, same weights),
    and every DPO case too. Returns the problems found (empty: all agree)."""
    problems = []
    for task in ("sft", "dpo"):
        names = [c.name for c in cases if c.task == task]
        for key in ("loss", "grad_norm"):
            vals = {n: first[n][key] for n in names}
            if vals and max(vals.values()) - min(vals.values()) > rtol * max(abs(v) for v in vals.values()):
                problems.append(f"{task} {key} differs across cases: {vals}")
    return problems


def run_preset(name: str, device: torch.device, args) -> list[dict]:
    preset = PRESETS[name]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cases, facts = build_cases(preset, device, dtype, args.work, args.padded_batch, args.only)
    cfg = facts.pop("model_cfg")
    by_name = {c.name: c for c in cases}
    cpu_peak = ((lambda case: cpu_peak_in_subprocess(name, case, args)) if args.cpu_peak == "subprocess" else
                (lambda case: measure_peak_cpu(by_name[case].run) / 2**20))
    first, peaks, ms, peak_flops = measure(cases, device, args.rep, cpu_peak)
    problems = check_agreement(cases, first, rtol=2e-2 if dtype == torch.bfloat16 else 2e-4)
    for p in problems:
        print("WARNING:", p)
    plain_bytes = torch.finfo(dtype).bits // 8
    rows = []
    for c in cases:
        tokens = real_tokens(c.batches)
        slots = sum(b["input_ids"].numel() for b in c.batches)
        flops = log.step_flops(cfg, facts["matmul_params"], c.batches)
        rows.append({
            "preset": name, "task": c.task, "case": c.name, "impl": c.impl, "layout": c.layout, "head": c.head,
            "dtype": "bf16" if dtype == torch.bfloat16 else "fp32", "threads": torch.get_num_threads(),
            "precision": ("fsdp2 bf16 mixed" if dtype == torch.bfloat16 else "fsdp2 fp32") if c.precision == "fsdp_mixed"
                         else ("pure bf16" if dtype == torch.bfloat16 else "fp32"),
            "micro_batches": len(c.batches), "real_tokens": tokens, "pad_fraction": 1 - tokens / slots,
            "ms": ms[c.name], "tokens_per_s": tokens / ms[c.name] * 1e3,
            "mfu": flops / (ms[c.name] / 1e3) / peak_flops, "peak_GFLOPs": peak_flops / 1e9,
            "extra_peak_MiB": peaks[c.name],  # weights + AdamW m, v (FSDP2: fp32 master weights and state)
            "state_MiB": facts["n_params"] * (4 if c.precision == "fsdp_mixed" else plain_bytes) * 3 / 2**20,
            "loss": first[c.name]["loss"], "grad_norm": first[c.name]["grad_norm"]})
    by = {r["case"]: r for r in rows}
    summary = {"preset": name, "task": "summary", "case": "summary", "agree": not problems, **facts}
    ratio = lambda a, b, k: by[a][k] / by[b][k] if a in by and b in by else None  # noqa: E731
    summary.update({
        "sft_fused_vs_logits_tok_s": ratio("ours_fused_packed", "ours_logits_packed", "tokens_per_s"),
        "sft_fused_vs_logits_mem": ratio("ours_fused_packed", "ours_logits_packed", "extra_peak_MiB"),
        "sft_packed_vs_padded_tok_s": ratio("ours_fused_packed", "ours_fused_padded", "tokens_per_s"),
        "sft_fsdp_vs_plain_tok_s": ratio("ours_fsdp_packed", "ours_fused_packed", "tokens_per_s"),
        "sft_ours_vs_hf_tok_s": ratio("ours_fused_packed", "hf_padded", "tokens_per_s"),
        "dpo_ours_vs_trl_logits_mem": ratio("ours_dpo_packed", "trl_logits_padded", "extra_peak_MiB"),
        "dpo_ours_vs_trl_logits_tok_s": ratio("ours_dpo_packed", "trl_logits_padded", "tokens_per_s"),
        "dpo_ours_vs_trl_fused_mem": ratio("ours_dpo_packed", "trl_fused_padded", "extra_peak_MiB"),
        "dpo_ours_vs_trl_fused_tok_s": ratio("ours_dpo_packed", "trl_fused_padded", "tokens_per_s"),
    })
    if device.type == "cpu":
        summary["targets"] = "sft_ours_vs_hf_tok_s >= 1.5; dpo_ours_vs_trl_*_mem <= 0.5"
    else:
        summary["targets"] = (f"ours_fsdp_packed mfu >= {MFU_TARGET} (llama2-1b); "
                              f"dpo_ours_vs_trl_*_tok_s >= {DPO_VS_TRL_TARGET}")
        summary["sft_mfu"] = by.get("ours_fsdp_packed", {}).get("mfu")
        summary["sft_mfu_pure_bf16"] = by.get("ours_fused_packed", {}).get("mfu")
    return rows + [summary]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", nargs="+", help=f"from {sorted(PRESETS)} (default: debug on CPU, "
                                                "llama2-1b llama2-7b-4l on CUDA)")
    ap.add_argument("--only", nargs="+", help="run only cases whose name contains one of these")
    ap.add_argument("--padded-batch", type=int, default=8, help="examples per padded micro-batch (SFT)")
    ap.add_argument("--rep", type=int, default=5, help="timing rounds (CPU) / seconds of repetitions (CUDA)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on a CPU shared with other jobs, an OpenMP barrier "
                         "waiting on a descheduled thread adds whole scheduler slices to every op)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ie_engine_bench_train_step"))
    ap.add_argument("--cpu-peak", choices=["subprocess", "inprocess"], default="subprocess",
                    help="CPU peak memory: a fresh process per case (exact), or in this process (quick: "
                         "other cases' heap can hide allocations; bench.gpu_check's dry run)")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--peak-of", help=argparse.SUPPRESS)  # internal: one case's CPU peak, in a child process
    args = ap.parse_args()
    os.environ["TRITON_INTERPRET"] = "0"  # CPU runs the kernels' PyTorch references, not the interpreter
    torch.set_num_threads(args.threads)
    if args.peak_of:
        return peak_of(args.preset[0], args.peak_of, args)
    device = torch.device(args.device)
    presets = args.preset or (["debug"] if device.type == "cpu" else ["llama2-1b", "llama2-7b-4l"])
    run_id = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for name in presets:
        rows = [{"run_id": run_id, **r} for r in run_preset(name, device, args)]
        cases, summary = rows[:-1], rows[-1]
        if args.no_save:
            print_table(cases)
        else:
            append_results("train_step", cases)
            append_results("train_step", [summary])
        print("# ratios (ours / baseline)")
        for k, v in summary.items():
            if k.startswith(("sft_", "dpo_")) and v is not None:
                print(f"  {k:32s} {v:.3f}" if isinstance(v, float) else f"  {k:32s} {v}")
        print(f"  targets: {summary['targets']}; cases agree on loss and grad norm: {summary['agree']}")
        for case, why in summary["not_run"].items():
            print(f"  {case}: n/a ({why})")
    if torch.distributed.is_initialized():  # ours_fsdp_packed's 1-process group
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
