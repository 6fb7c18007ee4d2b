"""Worker for the multi-process tests of engine/parallel.py and engine/train/checkpoint.py, launched by
pytest through `launch()` as `python -m torch.distributed.run --standalone --nproc_per_node 2
_dist_worker.py MODE OUT [ARGS]`. Rank 0 writes the results to OUT (an .npz of plain arrays) for pytest to
compare with a single-process reference built from the same helpers, which pytest imports.

The training loop is deliberately independent of engine/train/step.py: logits from `model(ids)`,
cross-entropy summed over this rank's tokens and divided by the valid-token count of the
whole global batch, AdamW.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F

from ie_engine.engine.model.config import ModelConfig
from ie_engine.engine.model.transformer import build_model

ROOT = Path(__file__).resolve().parents[1]
IGNORE = -100


def launch(*args: str, timeout: int = 120) -> None:
    """torchrun with 2 CPU processes; --standalone picks a free rendezvous port itself."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # the CPU (gloo) path, on any host
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"


def tiny_config() -> ModelConfig:
    return ModelConfig(dim=40, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=16,
                       max_seq_len=32)


def global_batches(n_steps: int, rows: int = 4, seq: int = 13, seed: int = 0):
    """Fixed global batches (ids, labels), with ignored labels spread unevenly over the rows so
    the ranks hold different valid-token counts."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_steps):
        ids = torch.randint(0, 97, (rows, seq), generator=g)
        labels = torch.roll(ids, -1, dims=1)
        labels[:, -1] = IGNORE
        drop = torch.rand(rows, seq, generator=g) < torch.linspace(0.0, 0.6, rows)[:, None]
        labels[drop] = IGNORE
        out.append((ids, labels))
    return out


def plain_model(seed: int = 0):
    model = build_model(tiny_config(), "meta")
    model.to_empty(device="cpu")
    model.init_weights(seed)
    return model


def make_optimizer(model):
    """The engine's own AdamW (foreach on CPU, fused on CUDA), as production builds it.
    eps well above the default 1e-8: Adam's g / sqrt(v) turns last-bit differences in a
    gradient that cancels to ~1e-10 (the sum order differs between 1 and 2 ranks) into a
    full-size update difference; eps bounds that amplification by lr / eps."""
    from ie_engine.engine.run_config import OptimConfig
    from ie_engine.engine.train.optim import build_optimizer
    return build_optimizer(model, OptimConfig(lr=3e-3, betas=[0.9, 0.95], eps=1e-5, weight_decay=0.1))


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's (or plain tensor's) full value, in fp32 on CPU."""
    t = t.full_tensor() if hasattr(t, "full_tensor") else t
    return t.detach().float().cpu().clone()


def train(model, opt, batches, rank: int = 0, world: int = 1, micro: int = 1, sched=None,
          first_grads: dict | None = None, noise: bool = False, head_fn: bool = False,
          sync_every: bool = True) -> list[float]:
    """Each rank takes its contiguous slice of rows of every global batch, split into `micro`
    micro-batches. Returns the global loss of each step (the same on every rank).

    noise: perturb the ids with the torch, numpy and python RNGs, so that a resumed run only
    reproduces the losses if all three RNG states were restored.
    head_fn: apply the output head through forward's head_fn, the path the fused-head losses take.
    sync_every: reduce-scatter gradients after every micro-batch (the engine's default), else
    only after the last (FSDP2 keeps unsharded gradients in between)."""
    from ie_engine.engine.parallel import set_grad_sync

    losses = []
    for ids, labels in batches:
        if noise:
            shift = int(torch.randint(0, 5, ())) + int(np.random.randint(0, 5)) + random.randrange(5)
            ids = (ids + shift) % 97
        n_valid = (labels != IGNORE).sum()
        rows = ids.shape[0] // world
        ids, labels = ids[rank * rows:(rank + 1) * rows], labels[rank * rows:(rank + 1) * rows]
        step_loss = torch.zeros(())
        for m, (x, y) in enumerate(zip(ids.chunk(micro), labels.chunk(micro))):
            set_grad_sync(model, sync_every or m == micro - 1)
            if head_fn:
                logits = model(x, head_fn=lambda h, w: F.linear(h, w).float()).view(*x.shape, -1)  # (b, T, V)
            else:
                logits = model(x)  # (b, T, V) fp32
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                                   reduction="sum") / n_valid
            loss.backward()
            step_loss += loss.detach()
        if world > 1:
            tdist.all_reduce(step_loss)
        losses.append(step_loss.item())
        if first_grads is not None and not first_grads:
            first_grads.update({n: full(p.grad) for n, p in _clean_named_parameters(model)})
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sched is not None:
            sched.step()
    return losses


def _clean_named_parameters(model):
    for name, p in model.named_parameters():
        yield name.replace("_checkpoint_wrapped_module.", ""), p


def params_of(model) -> dict[str, torch.Tensor]:
    return {n: full(p) for n, p in _clean_named_parameters(model)}


def make_scheduler(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))


# ------------------------------------------------------------------------------------------
# modes


def run_parallel(out: Path) -> None:
    from ie_engine.engine.parallel import (
        ParallelConfig,
        init_distributed,
        load_full_state_dict,
        materialize,
        parallelize,
    )

    world = init_distributed(timeout_s=60, device_type="cpu")
    r, w = world.rank, world.world_size
    results: dict[str, np.ndarray] = {}

    def record(tag, losses, model, grads):
        results[f"{tag}/loss"] = np.array(losses)
        for n, t in params_of(model).items():
            results[f"{tag}/param/{n}"] = t.numpy()
        for n, t in grads.items():
            results[f"{tag}/grad/{n}"] = t.numpy()

    batches = global_batches(3)
    for tag, pcfg, micro, head_fn, sync_every in [
        ("fsdp", ParallelConfig(), 1, False, True),
        ("hsdp", ParallelConfig(dp_replicate=2), 1, False, True),
        ("fsdp_accum", ParallelConfig(activation_checkpointing="full"), 2, False, True),
        ("fsdp_accum_sync_last", ParallelConfig(activation_checkpointing="full"), 2, False, False),
        ("fsdp_head_fn", ParallelConfig(), 1, True, True),
    ]:
        model = parallelize(build_model(tiny_config(), "meta"), pcfg, world)
        materialize(model, world, pcfg, seed=0)
        grads: dict = {}
        losses = train(model, make_optimizer(model), batches, r, w, micro=micro, first_grads=grads,
                       head_fn=head_fn, sync_every=sync_every)
        record(tag, losses, model, grads)

    # Mixed precision on 2 ranks: one step; master weights and gradients stay fp32 for bf16.
    for tag in ("bf16", "pure_bf16"):
        pcfg = ParallelConfig(mixed_precision=tag)
        model = parallelize(build_model(tiny_config(), "meta"), pcfg, world)
        materialize(model, world, pcfg, seed=0)
        grads = {}
        losses = train(model, make_optimizer(model), batches[:1], r, w, first_grads=grads)
        record(tag, losses, model, grads)
        results[f"{tag}/param_dtype"] = np.array(str(next(model.parameters()).dtype))

    # A full state dict (every rank holding it, or only rank 0) into a sharded model.
    ref = plain_model(seed=7)
    ids = batches[0][0]
    for tag, bcast in (("load_full", False), ("load_bcast", True)):
        pcfg = ParallelConfig()
        model = parallelize(build_model(tiny_config(), "meta"), pcfg, world)
        model.to_empty(device=world.device)
        model.init_rope()
        sd = ref.state_dict() if (r == 0 or not bcast) else {}
        load_full_state_dict(model, sd, broadcast_from_rank0=bcast)
        with torch.no_grad():
            results[f"{tag}/logits"] = model(ids).numpy()
    if r == 0:
        np.savez(out, **results)


def run_state(out: Path, root: Path, resume: bool) -> None:
    """First launch (resume=False): train 3 steps, save, train 2 more, save. Second launch:
    load the step-3 state (named explicitly) and train the same 2 steps."""
    from ie_engine.engine.parallel import ParallelConfig, init_distributed, materialize, parallelize
    from ie_engine.engine.train import checkpoint as train_checkpoint

    world = init_distributed(timeout_s=60, device_type="cpu")
    r, w = world.rank, world.world_size
    pcfg = ParallelConfig(activation_checkpointing="every_k")
    model = parallelize(build_model(tiny_config(), "meta"), pcfg, world)
    # A different init seed when resuming, so only a correct load can reproduce the losses.
    materialize(model, world, pcfg, seed=1 if resume else 0)
    opt = make_optimizer(model)
    sched = make_scheduler(opt)
    batches = global_batches(5)
    torch.manual_seed(100 + r)
    np.random.seed(200 + r)
    random.seed(300 + r)
    results: dict[str, np.ndarray] = {}
    if not resume:
        train(model, opt, sched=sched, batches=batches[:3], rank=r, world=w, noise=True)
        path = train_checkpoint.save_state(root, 3, model, opt, sched, {"epoch": 0, "cursor": 12},
                                config_text="model: tiny\n", keep=2)
        losses = train(model, opt, sched=sched, batches=batches[3:], rank=r, world=w, noise=True)
        train_checkpoint.save_state(root, 5, model, opt, sched, {"epoch": 0, "cursor": 20}, keep=2)
        results["saved_path"] = np.array(str(path))
    else:
        step, extra = train_checkpoint.load_state(root / "step-00000003", model, opt, sched)
        results["step"] = np.array(step)
        results["cursor"] = np.array(extra["cursor"])
        losses = train(model, opt, sched=sched, batches=batches[3:], rank=r, world=w, noise=True)
    results["loss"] = np.array(losses)
    results["lr"] = np.array(sched.get_last_lr())
    for n, t in params_of(model).items():
        results[f"param/{n}"] = t.numpy()
    if r == 0:
        np.savez(out, **results)


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    try:
        if mode == "parallel":
            run_parallel(out)
        elif mode in ("state_first", "state_resume"):
            run_state(out, Path(sys.argv[3]), resume=mode == "state_resume")
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        from ie_engine.engine.parallel import destroy_distributed
        destroy_distributed()
    from ie_engine.engine.parallel import exit_process
    exit_process(0)  # reached only on success; skips interpreter teardown (see its docstring)
