"""AdamW step time on FSDP2-sharded parameters (DTensors): the engine's choices (foreach on
CPU, fused on CUDA) against the one-tensor-at-a-time loop (foreach=False) the first version used.

    python -m ie_engine.bench.bench_optimizer [--device cpu|cuda] [--preset debug llama2-100m]

One process group of 1 (the same FSDP2 code path as N ranks); gradients filled with noise; the
median of --rep steps after a warm-up. Rows go to bench/results/optimizer.jsonl.
"""
from __future__ import annotations

import argparse

import torch

from ie_engine.bench.common import append_results, print_table, time_cpu, time_gpu
from ie_engine.engine import parallel
from ie_engine.engine.model.config import PRESETS
from ie_engine.engine.model.transformer import build_model
from ie_engine.engine.run_config import OptimConfig, ParallelConfig
from ie_engine.engine.train.optim import build_optimizer


def step_ms(model, implementation: str, device: torch.device, rep: int) -> float:
    opt = build_optimizer(model, OptimConfig(lr=1e-4, weight_decay=0.1, implementation=implementation))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    step = opt.step
    return (time_gpu(step, rep=rep) if device.type == "cuda" else time_cpu(step, warmup=1, rep=rep))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", nargs="+", default=["debug", "llama2-100m"])
    ap.add_argument("--rep", type=int, default=5)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    world = parallel.init_distributed()
    device = torch.device(args.device)
    impls = ["for_loop", "foreach", "fused"]
    rows = []
    for preset in args.preset:
        pcfg = ParallelConfig(mixed_precision="fp32")
        model = parallel.parallelize(build_model(PRESETS[preset], "meta"), pcfg, world)
        parallel.materialize(model, world, pcfg, seed=0)
        times = {impl: step_ms(model, impl, device, args.rep) for impl in impls}
        for impl, ms in times.items():
            rows.append({"preset": preset, "params": model.num_params(), "implementation": impl, "step_ms": round(ms, 2),
                         "speedup_vs_for_loop": round(times["for_loop"] / ms, 2)})
    print_table(rows)
    if not args.no_save:
        append_results("optimizer", rows)
    parallel.destroy_distributed()


if __name__ == "__main__":
    main()
