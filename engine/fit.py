"""The training loop both recipes share, in three steps:

    run = setup_training(cfg, world, model, cache, dataset kind)  # sampler, optimizer, schedule, resume
    last = train(run, loss_fn, count_fn, prepare_batch)           # steps, metrics, NaN stop, saves
    finish(run, tokenizer_path)                                    # final state + Hugging Face export

The loop logs whatever the loss returns under the names the loss chose.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import log, parallel, train_checkpoint
from engine.batching import to_device
from engine.config import ConfigError, format_config
from engine.hf_checkpoint import save_hf
from engine.optim import build_optimizer, build_scheduler
from engine.run_config import RunConfig
from engine.train_step import train_step


@dataclass
class TrainingRun:
    """Everything the loop carries between steps."""
    cfg: RunConfig
    world: parallel.World
    model: torch.nn.Module
    cache: object
    sampler: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    accum: int
    total: int
    start: int
    resumed_from: Path | None

    @property
    def checkpoints(self) -> Path:
        return Path(self.cfg.output_dir) / "checkpoints"

    def save(self, step: int) -> None:
        train_checkpoint.save_state(self.checkpoints, step, self.model, self.optimizer, self.scheduler,
                                    {"sampler": self.sampler.state_dict()}, format_config(self.cfg),
                                    keep=self.cfg.keep_checkpoints)


def setup_training(cfg: RunConfig, world: parallel.World, model, cache) -> TrainingRun:
    """Sampler, optimizer and schedule; then the newest checkpoint's state when resuming."""
    from data.sampler import RowSampler

    accum = cfg.accumulation_steps(world.world_size)
    sampler = RowSampler(cache.row_tokens, cfg.data.rows_per_micro_batch, world.world_size, world.rank, cfg.seed, accum)
    if sampler.steps_per_epoch == 0:
        raise ConfigError(f"global_batch_rows {cfg.global_batch_rows} exceeds the {cache.num_rows} rows of data")
    total = cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.epochs * sampler.steps_per_epoch)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total)
    run = TrainingRun(cfg, world, model, cache, sampler, optimizer, scheduler, accum, total, 0, None)
    if cfg.resume == "auto":
        run.resumed_from = train_checkpoint.latest_state(run.checkpoints)
    elif cfg.resume != "never":
        run.resumed_from = Path(cfg.resume)
    if run.resumed_from is not None:
        run.start, extra = train_checkpoint.load_state(run.resumed_from, model, optimizer, scheduler)
        sampler.load_state_dict(extra["sampler"])
    if world.rank == 0:
        print(f"[{'resumed from ' + str(run.resumed_from) if run.resumed_from else 'fresh run'}] {total} steps, "
              f"{accum} micro-batches of {cfg.data.rows_per_micro_batch} x {cache.seq_len} tokens per rank, "
              f"{world.world_size} ranks, {sampler.steps_per_epoch} steps per epoch", flush=True)
    return run


def train(run: TrainingRun, loss_fn, count_fn, prepare_batch=None) -> dict:
    """Steps start+1..total. loss_fn/count_fn as in engine.train_step.train_step; prepare_batch(batch)
    adds what a recipe needs (DPO: reference log-probs). Returns the last step's metrics."""
    cfg, world, model = run.cfg, run.world, run.model
    matmul_params = log.matmul_params(model)
    peak = log.device_peak_flops(world.device) * world.world_size
    flash = getattr(model, "attn_backend", None) == "flash" or cfg.model.attn_backend == "flash"
    sync_every = cfg.parallel.grad_sync == "every_micro_batch"
    logger = log.MetricsLogger(cfg.output_dir, world.rank, run.total, run.start, run.resumed_from is not None)
    record: dict = {}
    for step in range(run.start + 1, run.total + 1):
        t0 = time.perf_counter()
        host = [run.cache.batch(next(run.sampler)) for _ in range(run.accum)]
        batches = [to_device(b, world.device, with_cu_seqlens=flash) for b in host]
        if prepare_batch is not None:
            batches = [prepare_batch(b) for b in batches]
        out = train_step(model, run.optimizer, run.scheduler, batches, loss_fn, count_fn, cfg.optim.max_grad_norm,
                         sync_every)
        if not math.isfinite(out["loss"]):
            last = train_checkpoint.latest_state(run.checkpoints)
            raise FloatingPointError(f"non-finite loss ({out['loss']}) at step {step}; stopping. The last "
                                     f"good checkpoint is {last or 'none (no checkpoint was saved yet)'}")
        # Counted on the host batches (no device sync); all_reduce_sum moves them to the
        # communication device (NCCL serves GPU tensors only) and back.
        counts = torch.tensor([sum(float((b["doc_ids"] >= 0).sum()) for b in host),
                               log.step_flops(model.cfg, matmul_params, host)], dtype=torch.float64)
        parallel.all_reduce_sum(counts)
        dt = time.perf_counter() - t0
        record = {"step": step, "loss": out.pop("loss"), "lr": out.pop("lr"), "grad_norm": out.pop("grad_norm"),
                  "tokens_per_s": counts[0].item() / dt, "mfu": counts[1].item() / dt / peak,
                  "peak_mem_gb": log.peak_memory_gb(world.device)}
        out.pop("count")
        record.update(out)  # the loss's own statistics, under its names
        logger.log(record)
        if cfg.save_every and step % cfg.save_every == 0 and step < run.total:
            run.save(step)
    logger.close()
    return record


def finish(run: TrainingRun, tokenizer_path: str | None = None) -> Path:
    """The final resumable state (unless the run was already complete), then the Hugging Face
    export with the resolved config beside it. Returns the export directory."""
    if run.start < run.total:
        run.save(run.total)
    final = Path(run.cfg.output_dir) / "final"
    save_hf(run.model, final, tokenizer_path=tokenizer_path or None)
    if run.world.rank == 0:
        (final / "train_config.yaml").write_text(format_config(run.cfg) + "\n")
        print(f"saved {final}", flush=True)
    return final
