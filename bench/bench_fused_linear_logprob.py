"""Benchmark: fused lm-head log-probs / SFT cross-entropy vs eager (and torch.compile on GPU).

    python -m ie_engine.bench.bench_fused_linear_logprob            # GPU if there is one, else CPU
    python -m ie_engine.bench.bench_fused_linear_logprob --device cpu --n 2048   # a quicker CPU run
    python -m ie_engine.bench.bench_fused_linear_logprob --bf16-logits          # GPU: what fp32 logits cost

GPU (bf16, N=8192, H=4096, V=32000): fwd, bwd and fwd+bwd of eager (fused_linear_logprob_ref:
fp32 logits from fp32 copies of hidden and weight -> log_softmax -> gather; the spec, so heavier
than plain PyTorch's bf16 logits), torch.compile of that reference, and the fused op, timed with
do_bench; TFLOP/s as a fraction of the measured bf16 matmul peak, counted two ways: model flops
(2NHV forward, 4NHV backward, as eager does) and executed flops (the fused backward recomputes
the logits: 6NHV); extra peak memory of fwd+bwd. Targets: >= 60% of peak, <= 20% of eager's memory.
--bf16-logits adds the fused cases run with the pre-fix contract (each chunk's logits rounded to
bf16 by the matmul, no second dz buffer) and reports time_vs_bf16_logits and mem_vs_bf16_logits
for the fp32-logits rows: the cost of the contract. (The fp32-logits path needs
torch.mm(out_dtype=float32) on CUDA; without it the fused op upcasts weight blocks, which the
"fp32_out_mm" field of each row says.)

CPU (the chunked reference path, fp32, N=8192, H=2048, V=32000): fwd+bwd with a random
per-token upstream gradient, and the SFT cross-entropy; time ratio and extra peak RSS vs eager
(bench.common.measure_peak_cpu, from grads = None, so it includes the new dH and dW;
workspace = that minus dH and dW). Cases are timed round robin (median of --rep). Targets: memory <= 25% of eager's; time <= 1.35x eager for
log-probs (4 matmuls vs 3), <= 1.1x for the cross-entropy (3 matmuls, gradient in the forward).
Results are appended to bench/results/fused_linear_logprob.jsonl.
"""
import argparse
import importlib

import torch

from ie_engine.bench.common import (append_results, measure_peak_cpu, measure_peak_gpu, measured_peaks, time_cpu,
                                    time_gpu)
from ie_engine.kernels import _dispatch as kernels_dispatch
from ie_engine.kernels.cross_entropy import fused_linear_cross_entropy, fused_linear_cross_entropy_ref
from ie_engine.kernels.fused_linear_logprob import fused_linear_logprob, fused_linear_logprob_ref

flp = importlib.import_module("ie_engine.kernels.fused_linear_logprob")  # the modules, for their internals
ce = importlib.import_module("ie_engine.kernels.cross_entropy")


def make_inputs(n, h, v, dtype, device):
    torch.manual_seed(0)
    hidden = torch.randn(n, h, dtype=dtype, device=device, requires_grad=True)
    weight = (torch.randn(v, h, device=device) / h**0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), device=device)
    labels[::11] = -100
    grad = torch.randn(n, device=device)  # per-token upstream gradient (as from DPO)
    return hidden, weight, labels, grad


def cases(hidden, weight, labels, grad, compiled=None, chunk=None, bf16_logits=False):
    """name -> (kind, fwd callable). kind "logprob" takes the per-token grad, "ce" a scalar.
    bf16_logits adds the fused cases under the pre-fix contract (chunk logits in bf16)."""
    out = {
        "eager_logprob": ("logprob", lambda: fused_linear_logprob_ref(hidden, weight, labels)),
        "fused_logprob": ("logprob", lambda: fused_linear_logprob(hidden, weight, labels, chunk_tokens=chunk)),
        "eager_ce": ("ce", lambda: fused_linear_cross_entropy_ref(hidden, weight, labels)),
        "fused_ce": ("ce", lambda: fused_linear_cross_entropy(hidden, weight, labels, chunk_tokens=chunk)),
    }
    if compiled is not None:
        out["compiled_logprob"] = ("logprob", lambda: compiled(hidden, weight, labels))
    if bf16_logits:
        opts = flp._Options(-100, kernels_dispatch.use_triton(hidden), chunk, logits_dtype=torch.bfloat16)
        num_valid = ce._num_valid(labels, -100, None)
        out["fused_logprob_bf16logits"] = ("logprob", lambda: flp._FusedLinearLogprob.apply(
            hidden, weight, labels, opts))
        out["fused_ce_bf16logits"] = ("ce", lambda: ce._FusedLinearCrossEntropy.apply(
            hidden, weight, labels, num_valid, True, True, opts))
    return out


def compare_logits_dtype(rows):
    """fp32-logits rows get their time and memory relative to the same case with bf16 logits."""
    bf16 = {(r["case"].replace("_bf16logits", ""), r["mode"]): r for r in rows if r["case"].endswith("_bf16logits")}
    for row in rows:
        old = bf16.get((row["case"], row["mode"]))
        if old is None or row is old or "ms" not in row or "ms" not in old:
            continue
        row["time_vs_bf16_logits"] = row["ms"] / old["ms"]
        if "extra_peak_MiB" in row and "extra_peak_MiB" in old:
            row["mem_vs_bf16_logits"] = row["extra_peak_MiB"] / old["extra_peak_MiB"]


def fwd_bwd(kind, fwd, grad, params):
    def run():
        for p in params:
            p.grad = None
        y = fwd()
        y.backward(grad if kind == "logprob" else None)
    return run


def bench_cpu(args):
    n, h, v = args.n or 8192, args.h or 2048, args.v or 32000
    hidden, weight, labels, grad = make_inputs(n, h, v, torch.float32, "cpu")
    grad_mib = (n * h + v * h) * 4 / 2**20  # dH and dW, which every case allocates
    todo = {name: c for name, c in cases(hidden, weight, labels, grad, chunk=args.chunk).items()
            if not args.only or args.only in name}
    runs = {name: fwd_bwd(kind, fwd, grad, (hidden, weight)) for name, (kind, fwd) in todo.items()}
    peaks, times = {}, {name: [] for name in todo}
    for name, run in runs.items():
        hidden.grad = weight.grad = None  # from a clean state: the peak includes the new grads
        peaks[name] = measure_peak_cpu(run) / 2**20  # doubles as the warm-up run
    for _ in range(args.rep):  # round robin, so load from other processes hits every case alike
        for name, run in runs.items():
            times[name].append(time_cpu(run, warmup=0, rep=1))
    rows, base = [], {}
    for name, (kind, _) in todo.items():
        ms = sorted(times[name])[len(times[name]) // 2]
        row = {"case": name, "mode": "fwd+bwd", "N": n, "H": h, "V": v, "dtype": "fp32",
               "chunk": flp._chunk_size(n, v, 4, hidden.device, args.chunk), "threads": torch.get_num_threads(),
               "ms": ms, "extra_peak_MiB": peaks[name], "workspace_MiB": peaks[name] - grad_mib}
        if name.startswith("eager"):
            base[kind] = row
        elif kind in base:
            row["time_vs_eager"] = ms / base[kind]["ms"]
            row["mem_vs_eager"] = row["extra_peak_MiB"] / base[kind]["extra_peak_MiB"]
            row["workspace_vs_eager"] = row["workspace_MiB"] / base[kind]["workspace_MiB"]
            row["target"] = ("time<=1.35x" if kind == "logprob" else "time<=1.1x") + ",mem<=0.25x"
        rows.append(row)
    return rows


def bench_gpu(args):
    n, h, v = args.n or 8192, args.h or 4096, args.v or 32000
    hidden, weight, labels, grad = make_inputs(n, h, v, torch.bfloat16, "cuda")
    peaks = measured_peaks()
    compiled = torch.compile(fused_linear_logprob_ref)
    nhv = n * h * v
    model_flops = {"fwd": 2 * nhv, "bwd": 4 * nhv, "fwd+bwd": 6 * nhv}
    rows, base = [], {}
    fp32_out = flp._has_fp32_out_mm("cuda", torch.bfloat16)
    for name, (kind, fwd) in cases(hidden, weight, labels, grad, compiled, args.chunk, args.bf16_logits).items():
        if args.only and args.only not in name:
            continue
        recompute, y = name.startswith("fused_logprob"), None
        run = fwd_bwd(kind, fwd, grad, (hidden, weight))
        run()  # compile / warm up
        hidden.grad = weight.grad = None  # from a clean state, as on CPU: the peak includes the grads
        peak = measure_peak_gpu(run)
        modes = {"fwd+bwd": lambda: time_gpu(run, grad_to_none=[hidden, weight])}
        if kind == "logprob":
            y = fwd()
            modes["fwd"] = lambda: time_gpu(fwd)
            modes["bwd"] = lambda: time_gpu(lambda: y.backward(grad, retain_graph=True),
                                            grad_to_none=[hidden, weight])
        for mode, timer in modes.items():
            try:
                ms = timer()
            except RuntimeError as err:  # e.g. a compiled graph refusing a repeated backward
                rows.append({"case": name, "mode": mode, "error": str(err).splitlines()[0][:200]})
                continue
            executed = model_flops[mode] + (2 * nhv if recompute and mode != "fwd" else 0)
            row = {"case": name, "mode": mode, "N": n, "H": h, "V": v, "dtype": "bf16", "ms": ms,
                   "logits": "bf16" if name.endswith("_bf16logits") else "fp32", "fp32_out_mm": fp32_out,
                   "model_TFLOPs": model_flops[mode] / ms / 1e9,
                   "pct_peak_model": 100 * model_flops[mode] / ms / 1e9 / peaks["matmul_bf16_tflops"],
                   "pct_peak_executed": 100 * executed / ms / 1e9 / peaks["matmul_bf16_tflops"],
                   "peak_bf16_TFLOPs": peaks["matmul_bf16_tflops"]}
            if mode == "fwd+bwd":
                row["extra_peak_MiB"] = peak / 2**20
                eager = base.get(kind)
                if eager is None and name.startswith("eager"):
                    base[kind] = row
                elif eager is not None:
                    row["time_vs_eager"] = ms / eager["ms"]
                    row["mem_vs_eager"] = row["extra_peak_MiB"] / eager["extra_peak_MiB"]
            rows.append(row)
        del run, modes, y  # free this case's graph before the next one's peak is measured
        torch.cuda.empty_cache()
    compare_logits_dtype(rows)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int)
    ap.add_argument("--h", type=int)
    ap.add_argument("--v", type=int)
    ap.add_argument("--chunk", type=int, help="tokens per chunk (default: from the memory budget)")
    ap.add_argument("--only", help="run only cases whose name contains this")
    ap.add_argument("--rep", type=int, default=3, help="CPU timing repetitions (median)")
    ap.add_argument("--bf16-logits", action="store_true",
                    help="GPU: also time the fused cases with bf16 chunk logits (the pre-fix contract)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    rows = bench_gpu(args) if args.device == "cuda" else bench_cpu(args)
    if args.no_save:
        from ie_engine.bench.common import print_table
        print_table(rows)
    else:
        append_results("fused_linear_logprob", rows)


if __name__ == "__main__":
    main()
