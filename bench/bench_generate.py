"""Benchmark: generated tokens/s of ie_engine.engine.generate.generator vs transformers `generate`, same model, same
prompts, same settings.

    python -m ie_engine.bench.bench_generate                                   # CPU: debug and llama2-100m, fp32
    python -m ie_engine.bench.bench_generate --device cuda --preset llama2-1b llama2-7b --batch 1 64

Model: random weights from a preset (engine/model/config.py; llama2-100m is 101.9M parameters),
built once per preset straight in the benchmark's dtype (on meta, cast, then materialised: no
fp32 copy, 13.5 GB instead of 27 GB for 7B) and handed to transformers in memory
(engine/model/hf_checkpoint.to_transformers: the tensors save_hf would write, no disk round trip;
SDPA attention, flash-attn 2 on CUDA when installed), so both run the same weights in the same
dtype (CPU fp32, CUDA bf16). Every batch size runs on that one build; the preset's generators
(KV caches, CUDA graphs) and models are freed before the next preset.
Prompts: the first `batch` records of the bundled IE data (data/bundled.py), rendered with the
chat template up to the answer (engine/generate_files.encode_prompt) by the bundled tokenizer;
their lengths are in each row.
Settings: greedy, exactly --new-tokens new tokens per prompt (EOS off on both sides), all prompts
in one batch (ours: batch_size = batch), as the issue asks: batch 16, 128 new tokens.
Reported per case: generated tokens/s = batch x new tokens / wall time of the whole call (prefill
included), and the fraction of prompts whose greedy ids agree with transformers'. The summary row
has ours / transformers. Also the decode rate alone, from two timings, each after its own warm-up call (on CUDA the
1-token call has its own generator and graphs: building and capturing them must not be timed)
and each the median of at least 3 calls:
step = (t(N new) - t(1 new)) / (N - 1), decode tokens/s = batch / step, and its fraction of the
roofline that binds it. CUDA, memory: each step reads every weight but the embedding table plus
the KV cache in use (2 x layers x kv heads x head_dim x mean attended length x batch x element
bytes: what each row needs, not what padding makes an implementation read) at the HBM rate
(H200 4.8 TB/s). CPU, compute (a batch-16 step is compute-bound there: a 16-row fp32 GEMM streams
its weights at ~6 GB/s while a read-only pass runs at ~30): 2 x batch x (matmul weights) + 4 x
batch x layers x dim x mean attended length FLOPs per step at the measured fp32 matmul rate
(ie_engine.engine.log.measure_matmul_flops, the rate the training loop's CPU MFU uses).
Timing: CPU wall clock, cases round robin, median of --rep (at least 3) after a warm-up, 1
thread by default (the 2-core machine is shared); CUDA wall clock around synchronize, likewise.
Targets: CPU ours >= 2x transformers on debug, not slower on llama2-100m.
Rows go to bench/results/generate.jsonl.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from ie_engine.bench.common import append_results, hf_attn_implementation, timed
from ie_engine.engine.generate.config import GenerateSection
from ie_engine.engine.generate.generator import Generator, Request
from ie_engine.engine.log import measure_matmul_flops
from ie_engine.engine.model.config import PRESETS, ModelConfig
from ie_engine.engine.model.hf_checkpoint import to_transformers
from ie_engine.engine.model.transformer import build_model

HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}
MIN_REP = 3  # timed calls per measurement: one call's median is that call, outliers and all


def bundled_prompts(batch: int, cache_dir: str) -> list[list[int]]:
    from ie_engine.data.bundled import ensure_default_assets
    from ie_engine.data.tokenizer import Tokenizer
    from ie_engine.engine.generate.files import encode_prompt, prompt_messages
    assets = ensure_default_assets(cache_dir)
    tok = Tokenizer(assets["tokenizer"])
    lines = Path(assets["sft"]).read_text().splitlines()[:batch]
    return [encode_prompt(tok, prompt_messages(json.loads(line)["messages"], "")) for line in lines]


def build_pair(preset: str | ModelConfig, device: torch.device, dtype: torch.dtype):
    """Ours, built once in `dtype` on `device`, and transformers' model with the same weights."""
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    ours = build_model(cfg, "meta").to(dtype)  # cast on meta: the fp32 copy is never allocated
    ours.to_empty(device=device)
    ours.init_weights(0)  # also the fp32 RoPE tables
    ours.eval().requires_grad_(False)
    hf = to_transformers(ours, dtype, hf_attn_implementation(device)).eval().requires_grad_(False)
    hf.generation_config.eos_token_id = None  # exactly max_new_tokens, as ours with eos_id=-1
    hf.generation_config.pad_token_id = 0
    return ours, hf


def run_ours(model, prompts, new_tokens: int, generators: dict) -> list[list[int]]:
    """ie_engine.engine.generate.generator on all prompts at once. On CUDA the Generator (KV cache, captured CUDA
    graphs) is kept in `generators` between calls, as one long generate call keeps it: the
    timing is of generation, not of one-time graph capture. On CPU every call allocates afresh,
    as transformers does."""
    key = (len(prompts), max(map(len, prompts)), new_tokens)
    if key not in generators or model.tok_embeddings.weight.device.type == "cpu":
        settings = GenerateSection(max_new_tokens=new_tokens, batch_size=len(prompts))
        generators[key] = Generator(model, settings, rows=len(prompts), slots=key[1] + new_tokens, eos_id=-1)
    requests = [Request(p, [0], ("bench", str(i)), tag=i) for i, p in enumerate(prompts)]
    out = {c.request.tag: c.token_ids for b in generators[key].run(requests) for c in b}
    return [out[i] for i in range(len(prompts))]


@torch.inference_mode()
def run_hf(hf, prompts, new_tokens: int) -> list[list[int]]:
    device = hf.device
    T = max(map(len, prompts))
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding, as transformers generates
        ids[i, T - len(p):] = torch.tensor(p)
        attn[i, T - len(p):] = 1
    out = hf.generate(input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=False,
                      max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    assert out.shape[1] == T + new_tokens
    return out[:, T:].tolist()


def bench_preset(preset: str, batches: list[int], new_tokens: int, device: torch.device, rep: int,
                 cache_dir: str) -> list[dict]:
    """Every batch size on one build of the preset."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ours, hf = build_pair(preset, device, dtype)
    rows = []
    for batch in batches:
        generators: dict = {}
        rows += bench_batch(preset, ours, hf, bundled_prompts(batch, cache_dir), new_tokens, device, rep, generators)
        generators.clear()  # this batch's KV caches and graphs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_batch(preset: str, ours, hf, prompts, new_tokens: int, device: torch.device, rep: int,
                generators: dict) -> list[dict]:
    batch, dtype, rep = len(prompts), ours.tok_embeddings.weight.dtype, max(rep, MIN_REP)
    cases = {"ours": lambda n: run_ours(ours, prompts, n, generators), "transformers": lambda n: run_hf(hf, prompts, n)}
    ids = {name: fn(new_tokens) for name, fn in cases.items()}  # warm-up, and the ids to compare
    times = {name: [] for name in cases}
    for _ in range(rep):  # round robin: both see the same machine load
        for name, fn in cases.items():
            times[name].append(timed(lambda: fn(new_tokens), device))
    lens = sorted(map(len, prompts))
    common = {"preset": preset, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "new_tokens": new_tokens,
              "prompt_tokens_median": lens[len(lens) // 2], "prompt_tokens_max": lens[-1], "rep": rep,
              "threads": torch.get_num_threads() if device.type == "cpu" else None}
    rows = []
    for name in cases:
        sec = statistics.median(times[name])
        row = {**common, "case": name, "seconds": sec, "tokens_per_s": batch * new_tokens / sec,
               "greedy_match": sum(a == b for a, b in zip(ids[name], ids["transformers"])) / batch}
        row.update(decode_rate(cases[name], ours, prompts, new_tokens, device, rep))
        rows.append(row)
    rows.append({**common, "case": "summary", "speedup": rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]})
    return rows


def decode_rate(fn, model, prompts, new_tokens: int, device: torch.device, rep: int) -> dict:
    """Decode-only tokens/s and its fraction of the memory roofline (module docstring). fn(n)
    generates n tokens per prompt; fn(new_tokens) must have run already (bench_batch's warm-up)."""
    rep = max(rep, MIN_REP)
    fn(1)  # warm-up: on CUDA the 1-token call builds its own generator and captures its graphs
    t1 = statistics.median([timed(lambda: fn(1), device) for _ in range(rep)])
    tn = statistics.median([timed(lambda: fn(new_tokens), device) for _ in range(rep)])
    step = (tn - t1) / (new_tokens - 1)
    cfg, B = model.cfg, len(prompts)
    elem = model.tok_embeddings.weight.element_size()
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "tok_embeddings" not in n)
    mean_len = statistics.mean(len(p) for p in prompts) + new_tokens / 2
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * mean_len * B * elem
    row = {"decode_tokens_per_s": B / step, "decode_step_ms": step * 1e3, "bytes_per_step_mb": (weights + kv) / 1e6}
    if device.type == "cuda":
        hbm = next((v for k, v in HBM_BYTES_PER_S.items() if k in torch.cuda.get_device_name(device)), 4.8e12)
        return {**row, "roofline": "hbm", "roofline_pct": 100 * (weights + kv) / hbm / step}
    flops = 2 * B * weights / elem + 4 * B * cfg.n_layers * cfg.dim * mean_len
    peak = statistics.median(measure_matmul_flops(device) for _ in range(3))
    return {**row, "gflops_per_step": flops / 1e9, "roofline": "fp32_matmul", "peak_gflops": peak / 1e9,
            "roofline_pct": 100 * flops / peak / step}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", nargs="+", default=None)
    ap.add_argument("--batch", type=int, nargs="+", default=None)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rep", type=int, default=3, help="timed calls per measurement (at least 3)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default="runs/cache")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    presets = args.preset or (["llama2-1b", "llama2-7b"] if cuda else ["debug", "llama2-100m"])
    batches = args.batch or ([1, 64] if cuda else [16])
    if not cuda:
        torch.set_num_threads(args.threads)
    rows = []
    for preset in presets:
        rows += bench_preset(preset, batches, args.new_tokens, device, args.rep, args.cache_dir)
        if cuda:
            torch.cuda.empty_cache()  # the preset's models went with bench_preset's frame
    append_results("generate", rows)


if __name__ == "__main__":
    main()
