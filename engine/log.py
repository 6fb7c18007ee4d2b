"""What a run reports: a rank-0 progress bar (loss, lr, tokens/s, MFU, peak memory), every
step's record to the backends of log.backends (engine/trackers.py: output_dir/metrics.jsonl by
default, TensorBoard, Weights & Biases), and a loss-curve PNG from metrics.jsonl at the end.

MFU = achieved model FLOP/s / the device's peak. Model FLOPs per step, stated here once:
  6 * P * tokens                      (P = parameters outside the embedding table: every matmul
                                       weight, forward 2 + backward 4 FLOPs per weight per token)
+ 12 * n_layers * dim * sum_d L_d (L_d + 1) / 2
                                      (causal attention within each packed document of length
                                       L_d: QK^T and AV, 2 FLOPs each per pair, fwd + bwd x3)
Pad tokens count for nothing: tokens/s and MFU are over real (non-pad) tokens.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ie_engine.engine.trackers import build_trackers

# Dense bf16 tensor-core peaks (no sparsity) from the vendors' data sheets.
_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def device_peak_flops(device: torch.device) -> float:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in _PEAK_BF16.items():
            if key in name:
                return peak
    return measure_matmul_flops(device)


def measure_matmul_flops(device: torch.device, n: int = 1024, reps: int = 5) -> float:
    """A measured fp32 (CPU) / bf16 (GPU) matmul rate, for devices without a data-sheet entry."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def matmul_params(model: torch.nn.Module) -> int:
    """P of the formula above: every parameter outside the embedding table (a lookup, no FLOPs).
    On a sharded model, numel() of a DTensor parameter is the full (global) size."""
    return sum(p.numel() for n, p in model.named_parameters() if "tok_embeddings" not in n)


def step_flops(model_cfg, n_matmul_params: int, batch_list: list[dict]) -> float:
    """Model FLOPs of one step over these micro-batches (formula in the module docstring)."""
    tokens, attn = 0, 0.0
    for b in batch_list:
        doc = b["doc_ids"]
        real = doc >= 0
        tokens += int(real.sum())
        lengths = torch.bincount(doc[real].flatten()).double()
        attn += float((lengths * (lengths + 1) / 2).sum())
    return 6.0 * n_matmul_params * tokens + 12.0 * model_cfg.n_layers * model_cfg.dim * attn


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


class MetricsLogger:
    """Rank 0 shows the bar and feeds the trackers; other ranks hold a logger that does nothing."""

    def __init__(self, cfg, rank: int, total_steps: int, start_step: int, resumed: bool):
        self.active = rank == 0
        self.path = Path(cfg.output_dir) / "metrics.jsonl"
        self.plot = "jsonl" in cfg.log.backends  # loss.png is drawn from metrics.jsonl
        self.bar = self.trackers = None
        if not self.active:
            return
        self.trackers = build_trackers(cfg, start_step, resumed)
        from tqdm import tqdm
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True,
                        disable=os.environ.get("ENGINE_NO_BAR") == "1")

    def log(self, record: dict) -> None:
        if not self.active:
            return
        self.trackers.log(record)
        self.bar.update(1)
        self.bar.set_postfix({"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}",
                              "tok/s": f"{record['tokens_per_s']:.0f}", "mfu": f"{100 * record['mfu']:.1f}%",
                              "mem": f"{record['peak_mem_gb']:.1f}G"})

    def close(self) -> None:
        if not self.active:
            return
        self.bar.close()
        self.trackers.close()
        if self.plot and self.path.exists():
            plot_loss(self.path, self.path.with_name("loss.png"))


def plot_loss(metrics_path: Path, png_path: Path) -> None:
    """One panel per metric (loss; DPO adds reward_accuracy): the raw per-step values drawn light,
    and a trailing moving average over them, since a DPO loss is too noisy to read per step."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no {png_path.name} (metrics are in {metrics_path.name})")
        return
    import numpy as np

    rows = [json.loads(l) for l in metrics_path.read_text().splitlines() if l]
    keys = ["loss"] + (["reward_accuracy"] if rows and "reward_accuracy" in rows[0] else [])
    steps = np.array([r["step"] for r in rows])
    window = min(max(len(rows) // 20, 1), 100)  # ~20 windows over the run, at most 100 steps each
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = np.array([r[key] for r in rows], dtype=np.float64)
        ax.plot(steps, values, color="C0", alpha=0.3, linewidth=0.8, label=key)
        if window > 1:  # mean of the last `window` values (fewer at the start)
            csum = np.concatenate([[0.0], np.cumsum(values)])
            lo = np.maximum(np.arange(1, len(values) + 1) - window, 0)
            mean = (csum[1:] - csum[lo]) / (np.arange(1, len(values) + 1) - lo)
            ax.plot(steps, mean, color="C0", linewidth=1.8, label=f"mean of last {window} steps")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
