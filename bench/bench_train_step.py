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
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ie_engine.bench.common import (DPO_VS_TRL_TARGET, MFU_TARGET, REPO_ROOT, append_results, measure_peak_cpu,
                                    measure_peak_gpu, print_table, time_cpu, time_gpu)
from ie_engine.bench.train_step_data import (BETA, IGNORE, PAD_MULTIPLE, PRESETS, BenchPreset, build_caches,
                                             build_fsdp, build_hf, build_ours, have, padded_batch, pick_rows,
                                             real_tokens, row_documents, valid_targets)
from ie_engine.bench.train_step_losses import (hf_sft_loss, logits_ce_loss, padded_sft_loss, trl_fused_dpo_loss,
                                               trl_logits_dpo_loss)
from ie_engine.engine import log
from ie_engine.engine.run_config import DPOSection, OptimConfig
from ie_engine.engine.train.batching import to_device
from ie_engine.engine.train.losses import preference_loss, score_documents, sft_loss
from ie_engine.engine.train.optim import build_optimizer, build_scheduler
from ie_engine.engine.train.step import train_step

SFT_CASES = ("ours_fused_packed", "ours_fsdp_packed", "ours_logits_packed", "ours_fused_padded", "hf_padded")
DPO_CASES = ("ours_dpo_packed", "trl_logits_padded", "trl_fused_padded")
NEEDS = {"hf_padded": ("transformers",), "trl_logits_padded": ("transformers",),
         "trl_fused_padded": ("transformers", "trl")}  # packages a baseline cannot run without


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
