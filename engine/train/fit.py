"""The training loop both recipes share, in three steps:

    run = setup_training(cfg, world, model, cache)              # sampler, optimizer, schedule, resume
    last = train(run, loss_fn, count_fn, prepare_batch, evaluate) # steps, metrics, NaN stop, saves
    finish(run, tokenizer_path)                                  # final state + Hugging Face export

The loop logs whatever the loss returns under the names the loss chose; `evaluate(run, cache, ...)`
scores a held-out cache with the same loss (no grad) and returns those names prefixed "eval_".
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ie_engine.engine import log, parallel
from ie_engine.engine.config import ConfigError, format_config
from ie_engine.engine.model.hf_checkpoint import save_hf
from ie_engine.engine.run_config import RunConfig
from ie_engine.engine.train import checkpoint as train_checkpoint
from ie_engine.engine.train.batching import to_device
from ie_engine.engine.train.optim import build_optimizer, build_scheduler
from ie_engine.engine.train.step import train_step


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
    from ie_engine.data.sampler import RowSampler

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


def train(run: TrainingRun, loss_fn, count_fn, prepare_batch=None, eval_fn=None) -> dict:
    """Steps start+1..total. loss_fn/count_fn as in ie_engine.engine.train.step.train_step; prepare_batch(batch)
    adds what a recipe needs (DPO: reference log-probs); eval_fn() -> held-out metrics, run every
    cfg.eval_every steps and after the last. Returns the last step's metrics."""
    cfg, world, model = run.cfg, run.world, run.model
    matmul_params = log.matmul_params(model)
    peak = log.device_peak_flops(world.device) * world.world_size
    flash = getattr(model, "attn_backend", None) == "flash" or cfg.model.attn_backend == "flash"
    sync_every = cfg.parallel.grad_sync == "every_micro_batch"
    logger = log.MetricsLogger(cfg, world.rank, run.total, run.start, run.resumed_from is not None)
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
        if eval_fn is not None and (step == run.total or (cfg.eval_every and step % cfg.eval_every == 0)):
            record.update(eval_fn())
        logger.log(record)
        if cfg.save_every and step % cfg.save_every == 0 and step < run.total:
            run.save(step)
    logger.close()
    return record


def evaluate(run: TrainingRun, cache, loss_fn, count_fn, prepare_batch=None) -> dict:
    """The loss and its statistics over every row of a held-out cache, without gradients: rows
    split across ranks (each rank runs the same number of forwards, for FSDP's collectives), the
    loss normalised by the whole set's count (tokens or pairs), statistics divided by it."""
    world, model, cfg = run.world, run.model, run.cfg
    rows = np.arange(cache.num_rows)
    mine = rows[world.rank::world.world_size]
    per_rank, step = -(-cache.num_rows // world.world_size), cfg.data.rows_per_micro_batch
    flash = getattr(model, "attn_backend", None) == "flash"
    host = [(cache.batch(mine[i:i + step] if i < len(mine) else rows[:1]), i < len(mine))
            for i in range(0, per_rank, step)]
    count = parallel.all_reduce_sum(torch.tensor(float(sum(count_fn(b) for b, real in host if real)),
                                                 device=world.device)).clamp(min=1.0)
    sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=world.device)}
    model.eval()
    with torch.no_grad():
        for b, real in host:
            batch = to_device(b, world.device, with_cu_seqlens=flash)
            if prepare_batch is not None:
                batch = prepare_batch(batch)
            loss, stats = loss_fn(model, batch, count)
            if real:
                sums["loss"] += loss.float()
                for k, v in stats.items():
                    sums[k] = sums.get(k, torch.zeros((), device=world.device)) + v.float()
    parallel.reshard(model)
    model.train()
    names = list(sums)
    totals = parallel.all_reduce_sum(torch.stack([sums[k] for k in names]))
    return {f"eval_{k}": (v if k == "loss" else v / count.item())
            for k, v in zip(names, totals.tolist())}


def finish(run: TrainingRun, tokenizer_path: str | None = None) -> Path:
    """The final resumable state (unless the run was already complete), then the Hugging Face
    export with the resolved config beside it; with eval.files set, the export's answers to them,
    scored (output_dir/eval/metrics.json). Returns the export directory."""
    if run.start < run.total:
        run.save(run.total)
    final = Path(run.cfg.output_dir) / "final"
    save_hf(run.model, final, tokenizer_path=tokenizer_path or None)
    if run.world.rank == 0:
        (final / "train_config.yaml").write_text(format_config(run.cfg) + "\n")
        print(f"saved {final}", flush=True)
    if run.cfg.eval.files:  # generate answers to the test files with the export and score them
        from ie_engine.engine.generate.evaluation import evaluate_checkpoint
        run.optimizer = run.scheduler = None  # the optimizer state is not needed any more
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        section = dataclasses.replace(run.cfg.eval, cache_dir=run.cfg.data.cache_dir,
                                      tokenizer=run.cfg.eval.tokenizer or (tokenizer_path or ""))
        evaluate_checkpoint(str(final), section, Path(run.cfg.output_dir) / "eval", run.world, run.cfg.parallel,
                            run.cfg.seed, run.cfg.model.attn_backend)
    return final
