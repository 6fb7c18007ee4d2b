"""Benchmark: the fused head's extra memory and time vs eager at each family's vocabulary.

    python -m ie_engine.bench.bench_families                 # CPU, N=512 tokens, H=128: under a minute
    python -m ie_engine.bench.bench_families --n 2048 --no-save

ADELIE's bases differ most where the head costs most: Llama-2's 32,000 ids, Llama-3's 128,256 and
Qwen2.5's padded 151,936. At each V, fwd+bwd of the eager head (logits -> log_softmax -> gather:
kernels' `*_ref`) and of the fused ops (fused_linear_logprob for DPO, fused_linear_cross_entropy
for SFT) on the CPU reference path, fp32, with the kernels' own chunk policy (a 128 MiB logits
buffer: 1024 tokens per chunk at 32k, so one chunk at the default N; 256 at 128k, 192 at 152k). Inputs, cases and the fwd+bwd
closure are bench/bench_fused_linear_logprob.py's; peak memory and timing bench/common.py's.

Columns: extra peak RSS of one fwd+bwd from grads = None (so it includes the new dH and dW),
workspace = that minus dH and dW (what the head needs beyond its gradients), the ratios fused /
eager, median ms of --rep round-robin runs, and GFLOP/s of the matmuls the eager path does
(6NHV). Eager's workspace grows with N * V (several (N, V) fp32 tensors); the fused one with
chunk * V, a constant 128 MiB budget, so its advantage grows with N (a real micro-batch holds
thousands of tokens: bench/bench_fused_linear_logprob.py measures N=8192 at V=32,000).
Appended to bench/results/families.jsonl.
"""
import argparse
import importlib
import os

import torch

from ie_engine.bench.bench_fused_linear_logprob import cases, fwd_bwd, make_inputs
from ie_engine.bench.common import append_results, measure_peak_cpu, print_table, time_cpu

flp = importlib.import_module("ie_engine.kernels.fused_linear_logprob")  # the module (for its chunk policy)

VOCABS = {"llama2": 32000, "llama3": 128256, "qwen2.5": 151936}


def bench_vocab(family: str, v: int, n: int, h: int, rep: int) -> list[dict]:
    hidden, weight, labels, grad = make_inputs(n, h, v, torch.float32, "cpu")
    grad_mib = (n * h + v * h) * 4 / 2**20  # dH and dW, which every case allocates
    runs = {name: (kind, fwd_bwd(kind, fwd, grad, (hidden, weight)))
            for name, (kind, fwd) in cases(hidden, weight, labels, grad).items()}
    peaks, times = {}, {name: [] for name in runs}
    for name, (_, run) in runs.items():
        hidden.grad = weight.grad = None  # from a clean state: the peak includes the new grads
        peaks[name] = measure_peak_cpu(run) / 2**20  # doubles as the warm-up run
    for _ in range(rep):  # round robin, so load from other processes hits every case alike
        for name, (_, run) in runs.items():
            times[name].append(time_cpu(run, warmup=0, rep=1))
    rows, base = [], {}
    for name, (kind, _) in runs.items():
        ms = sorted(times[name])[len(times[name]) // 2]
        row = {"family": family, "case": name, "mode": "fwd+bwd", "N": n, "H": h, "V": v, "dtype": "fp32",
               "chunk": flp._chunk_size(n, v, 4, hidden.device), "threads": torch.get_num_threads(),
               "ms": ms, "GFLOPs": 6 * n * h * v / ms / 1e6,
               "extra_peak_MiB": peaks[name], "workspace_MiB": peaks[name] - grad_mib}
        if name.startswith("eager"):
            base[kind] = row
        else:
            row["time_vs_eager"] = ms / base[kind]["ms"]
            row["mem_vs_eager"] = row["extra_peak_MiB"] / base[kind]["extra_peak_MiB"]
            row["workspace_vs_eager"] = row["workspace_MiB"] / base[kind]["workspace_MiB"]
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512, help="tokens")
    ap.add_argument("--h", type=int, default=128, help="hidden size")
    ap.add_argument("--rep", type=int, default=2, help="timing repetitions (median)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    os.environ["TRITON_INTERPRET"] = "0"  # CPU runs the PyTorch reference path, not the interpreter
    rows = [r for family, v in VOCABS.items() for r in bench_vocab(family, v, args.n, args.h, args.rep)]
    if args.no_save:
        print_table(rows)
    else:
        append_results("families", rows)


if __name__ == "__main__":
    main()
