"""Benchmark rms_norm, apply_rope and swiglu: Triton kernel vs eager reference vs torch.compile
of the reference, forward / backward / both, time, peak memory and bandwidth.

    python -m ie_engine.bench.bench_norm_rope_swiglu            # GPU: LLaMA-7B shapes, bf16
    python -m ie_engine.bench.bench_norm_rope_swiglu --small    # small shapes (the default on CPU)
    python -m ie_engine.bench.bench_norm_rope_swiglu --modes fwd+bwd   # one pass (bench.gpu_check)

Shapes (GPU): 8192 tokens (4 x 2048), dim 4096, FFN 11008, 32 q and 32 kv heads of 128.
All three ops are memory-bound, so the figure of merit is GB/s: the minimum bytes each op must
move (read inputs, write outputs; saved-tensor re-reads in backward) over time, as a percentage
of this GPU's measured copy bandwidth (bench.common.measured_peaks). 'x_compiled' is
compiled_ms / ms: above 1 means faster than torch.compile of the reference. Peak memory is the
extra CUDA memory (or resident memory on CPU) above what was live before the call; for 'fwd'
it includes what autograd saves for backward.
On CPU there is no compiled Triton (the interpreter is a correctness tool, not a speed one), so
only the reference and its torch.compile are timed; on a shared CPU run it with OMP_NUM_THREADS=1
(a descheduled OpenMP thread stalls every parallel op by a scheduler tick, inflating medians 100x).
Baselines are the kernel files' own *_ref.
Rows are appended to bench/results/norm_rope_swiglu.jsonl with date, git sha, device, versions.
"""
import argparse
from dataclasses import dataclass
from typing import Callable

import torch

from ie_engine.bench.common import (append_results, measure_peak_cpu, measure_peak_gpu, measured_peaks, time_cpu,
                                    time_gpu)
from ie_engine.kernels.rms_norm import rms_norm, rms_norm_ref
from ie_engine.kernels.rope import apply_rope, apply_rope_ref
from ie_engine.kernels.swiglu import swiglu, swiglu_ref

EPS = 1e-5
LLAMA_7B = dict(batch=4, seq=2048, dim=4096, ffn=11008, n_heads=32, n_kv_heads=32, head_dim=128)
SMALL = dict(batch=2, seq=128, dim=512, ffn=1376, n_heads=8, n_kv_heads=2, head_dim=64)
MODES = ("fwd", "bwd", "fwd+bwd")


@dataclass
class Case:
    """One op at one shape: impls map a name to a function of the differentiable inputs."""
    kernel: str
    shape: str
    impls: dict[str, Callable]
    inputs: list[torch.Tensor]  # leaves with requires_grad
    grads: list[torch.Tensor]  # upstream gradients, one per output
    bytes: dict[str, int]  # minimum bytes moved per mode


def _outputs(out):
    return list(out) if isinstance(out, tuple) else [out]


def build_cases(s: dict, dtype: torch.dtype, device: str, with_triton: bool) -> list[Case]:
    def leaf(*shape, scale=1.0):
        return (scale * torch.randn(*shape, device=device, dtype=dtype)).requires_grad_()

    # The "bwd" mode re-runs one backward (retain_graph=True), which a compiled backward with
    # donated buffers refuses (torch >= 2.6; decided when the backward compiles, so it cannot be
    # scoped to a call): off for the benchmark's process.
    import torch._functorch.config as functorch_config
    if hasattr(functorch_config, "donated_buffer"):
        functorch_config.donated_buffer = False

    def impls(public, ref):
        out = {"ref": ref, "compiled": torch.compile(ref)}
        if with_triton:
            out["triton"] = public
        return out

    n, e = s["batch"] * s["seq"], torch.finfo(dtype).bits // 8
    cases = []

    x, w = leaf(n, s["dim"]), leaf(s["dim"])
    cases.append(Case("rms_norm", f"{n}x{s['dim']}",
                      impls(lambda x, w: rms_norm(x, w, EPS), lambda x, w: rms_norm_ref(x, w, EPS)),
                      [x, w], [torch.randn_like(x)],
                      # fwd: read x, write y; bwd: read dy and x, write dx (weight is negligible)
                      {"fwd": 2 * x.numel() * e, "bwd": 3 * x.numel() * e, "fwd+bwd": 5 * x.numel() * e}))

    gate, up = leaf(n, s["ffn"], scale=3.0), leaf(n, s["ffn"])
    cases.append(Case("swiglu", f"{n}x{s['ffn']}", impls(swiglu, swiglu_ref), [gate, up],
                      [torch.randn_like(gate)],
                      # fwd: read gate, up, write y; bwd: read dy, gate, up, write dgate, dup
                      {m: c * gate.numel() * e for m, c in zip(MODES, (3, 5, 8))}))

    B, T, hd = s["batch"], s["seq"], s["head_dim"]
    q, k = leaf(B, T, s["n_heads"], hd), leaf(B, T, s["n_kv_heads"], hd)
    inv = 10000.0 ** (-torch.arange(0, hd, 2, device=device, dtype=torch.float64) / hd)
    angles = torch.outer(torch.arange(T, device=device, dtype=torch.float64), inv)
    cos, sin = angles.cos().float(), angles.sin().float()
    # packed rows: documents of T/4 tokens, positions restart at 0 in each
    positions = (torch.arange(T, device=device) % (T // 4)).expand(B, T).contiguous()
    qk = (q.numel() + k.numel()) * e
    cases.append(Case("rope", f"{B}x{T}x({s['n_heads']}+{s['n_kv_heads']})x{hd}",
                      impls(lambda q, k: apply_rope(q, k, cos, sin, positions),
                            lambda q, k: apply_rope_ref(q, k, cos, sin, positions)),
                      [q, k], [torch.randn_like(q), torch.randn_like(k)],
                      # read q, k, write q_out, k_out; backward the same for the gradients
                      {"fwd": 2 * qk, "bwd": 2 * qk, "fwd+bwd": 4 * qk}))
    return cases


def mode_fn(case: Case, f: Callable, mode: str) -> Callable:
    """A no-argument callable running one mode. 'bwd' runs the forward once, outside the timing,
    and re-runs only the backward (retain_graph); autograd.grad avoids .grad accumulation adds."""
    if mode == "fwd":
        return lambda: f(*case.inputs)
    if mode == "bwd":
        outs = _outputs(f(*case.inputs))
        return lambda: torch.autograd.grad(outs, case.inputs, case.grads, retain_graph=True)
    return lambda: torch.autograd.grad(_outputs(f(*case.inputs)), case.inputs, case.grads)


def bench_case(case: Case, dtype: torch.dtype, on_gpu: bool, copy_gbps: float | None,
               modes: tuple[str, ...] = MODES) -> list[dict]:
    # CPU: shared cores are noisy, so take the median of more runs than bench.common's default
    timer, peak = time_gpu, measure_peak_gpu
    if not on_gpu:
        timer, peak = (lambda fn: time_cpu(fn, warmup=3, rep=15)), measure_peak_cpu
    rows = []
    for mode in modes:
        by_impl = {}
        for name, f in case.impls.items():
            fn = mode_fn(case, f, mode)
            fn()  # compile / JIT outside the timing
            ms = timer(fn)
            gbps = case.bytes[mode] / ms / 1e6
            row = {"kernel": case.kernel, "impl": name, "mode": mode, "shape": case.shape,
                   "dtype": str(dtype).removeprefix("torch."), "ms": ms, "GB/s": gbps,
                   "peak_MiB": peak(fn) / 2**20}
            if copy_gbps:
                row["%copy"] = 100 * gbps / copy_gbps
            by_impl[name] = row
            del fn
        for row in by_impl.values():
            row["x_compiled"] = by_impl["compiled"]["ms"] / row["ms"]
        rows += by_impl.values()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="small shapes (always on CPU)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="passes to time")
    args = p.parse_args()
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    dtype = getattr(torch, args.dtype) if on_gpu else torch.float32  # CPU: fp32, as the engine runs there
    shapes = SMALL if args.small or not on_gpu else LLAMA_7B
    copy_gbps = measured_peaks()["copy_gbps"] if on_gpu else None
    torch.manual_seed(0)
    rows = []
    for case in build_cases(shapes, dtype, device, with_triton=on_gpu):
        rows += bench_case(case, dtype, on_gpu, copy_gbps, tuple(args.modes))
        if on_gpu:
            torch.cuda.empty_cache()
    if copy_gbps:
        print(f"# measured copy bandwidth: {copy_gbps:.0f} GB/s")
    append_results("norm_rope_swiglu", rows)


if __name__ == "__main__":
    main()
