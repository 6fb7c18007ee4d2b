"""Benchmark the fused DPO loss: Triton kernel vs its eager reference vs torch.compile(reference).

    python -m ie_engine.bench.bench_dpo_loss                       # GPU if there is one, else CPU
    python -m ie_engine.bench.bench_dpo_loss --device cpu --sizes 4096 --no-compile

For each batch size B (pairs) and pass (fwd, bwd, fwd+bwd) it prints and appends to
bench/results/dpo_loss.jsonl: median time (do_bench on GPU, wall clock on CPU), effective GB/s
over the bytes the pass must move, % of this GPU's measured copy bandwidth, and the pass's peak
extra memory. Bytes moved (fp32): fwd reads 4 inputs and writes losses and two rewards (28 B per
pair); bwd reads 4 inputs and the upstream gradient and writes two gradients (28 B per pair).

The op moves ~1.8 MB at B=65536, so on a GPU every variant is launch-bound; what the fused kernel
buys is one launch per pass instead of the reference's chain of small kernels (eager) and no
saved intermediates. On CPU the public function runs the reference (Triton only runs on CPU
through its interpreter, a test tool), so the CPU rows compare eager with compiled reference.
On a CPU shared with other jobs, run with --threads 1: at these sizes threads gain nothing, and
an OpenMP barrier waiting on a descheduled thread adds whole scheduler slices (4-16 ms) to a
0.03 ms op.
"""
import argparse

import torch

from ie_engine.bench.common import (append_results, measure_peak_cpu, measure_peak_gpu, measured_peaks, time_cpu,
                                    time_gpu)
from ie_engine.kernels.dpo_loss import dpo_loss, dpo_loss_ref

BYTES_PER_PAIR = {"fwd": 28, "bwd": 28, "fwd+bwd": 56}


def make_inputs(B: int, device: str) -> list[torch.Tensor]:
    rc = -torch.rand(B, device=device) * 300 - 1
    rr = -torch.rand(B, device=device) * 300 - 1
    pc = (rc + torch.randn(B, device=device) * 15).requires_grad_()
    pr = (rr + torch.randn(B, device=device) * 15).requires_grad_()
    return [pc, pr, rc, rr]


def passes(fn, inputs, loss_type: str, ls: float) -> dict:
    """The three timed closures for one implementation."""
    pc, pr, rc, rr = inputs
    g = torch.randn(pc.shape[0], device=pc.device)

    def fwd():
        with torch.no_grad():
            return fn(pc, pr, rc, rr, 0.1, loss_type, ls)

    losses = fn(pc, pr, rc, rr, 0.1, loss_type, ls)[0]

    def bwd():
        return torch.autograd.grad(losses, (pc, pr), g, retain_graph=True)

    def both():
        return torch.autograd.grad(fn(pc, pr, rc, rr, 0.1, loss_type, ls)[0], (pc, pr), g)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": both}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 65536])
    p.add_argument("--loss-types", nargs="+", default=["sigmoid", "ipo"])
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = args.device == "cuda"

    impls = {"eager_ref": dpo_loss_ref}
    if on_gpu:
        impls = {"triton": dpo_loss, **impls}
    if not args.no_compile:
        impls["compiled_ref"] = torch.compile(dpo_loss_ref, dynamic=False)
    peak_gbps = measured_peaks()["copy_gbps"] if on_gpu else None
    timer = time_gpu if on_gpu else (lambda fn: time_cpu(fn, warmup=3, rep=20))
    peak_mem = measure_peak_gpu if on_gpu else measure_peak_cpu

    rows = []
    for loss_type in args.loss_types:
        ls = 0.1 if loss_type == "sigmoid" else 0.0
        for B in args.sizes:
            inputs = make_inputs(B, args.device)
            for name, fn in impls.items():
                for pass_name, closure in passes(fn, inputs, loss_type, ls).items():
                    closure()  # compile / warm up outside the timed and measured region
                    ms = timer(closure)
                    gbps = BYTES_PER_PAIR[pass_name] * B / ms / 1e6
                    rows.append({
                        "op": "dpo_loss", "loss_type": loss_type, "B": B, "impl": name, "pass": pass_name,
                        "ms": ms, "GB/s": gbps,
                        "pct_copy_peak": 100 * gbps / peak_gbps if peak_gbps else None,
                        "peak_mem_MiB": peak_mem(closure) / 2**20,
                    })
    append_results("dpo_loss", rows)


if __name__ == "__main__":
    main()
