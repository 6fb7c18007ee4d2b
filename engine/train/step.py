"""One optimizer step over several micro-batches: forward/backward each, clip, AdamW, schedule.

Gradient accumulation under FSDP2 (`sync_every_micro_batch`, from parallel.grad_sync):
- True (default): every micro-batch's backward reduce-scatters its gradients, so each rank only
  ever holds its fp32 gradient SHARD (4 bytes x params / ranks): 7B on 8 ranks, 3.4 GB.
- False: gradient sync is off for all but the last micro-batch; FSDP2 then keeps the UNSHARDED
  fp32 gradients on every rank until the last backward (4 bytes x params: ~27 GB for 7B) and
  reduces once. It saves (k - 1) reduce-scatters per step, which pays only when the model is
  small next to the memory and the interconnect is slow (several nodes without InfiniBand).
Both give the same gradients (summed over micro-batches and ranks) up to rounding.
"""
from __future__ import annotations

import torch

from ie_engine.engine.parallel import all_reduce_sum, set_grad_sync


def train_step(model, optimizer, scheduler, micro_batches: list[dict], loss_fn, count_fn,
               max_grad_norm: float, sync_every_micro_batch: bool = True) -> dict:
    """One optimizer step. count_fn(batch) -> this micro-batch's normaliser count (valid tokens
    or pairs); loss_fn(model, batch, step_count) -> (loss, sums of extra stats). Returns floats:
    loss (the step's normalised loss over all ranks), grad_norm, lr, count, and each stat's
    step total divided by count, under the name the loss gave it."""
    device = next(model.parameters()).device
    count = all_reduce_sum(torch.tensor(float(sum(count_fn(b) for b in micro_batches)), device=device))
    step_count = count.clamp(min=1.0)
    loss_sum = torch.zeros((), device=device)
    stat_sums: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro_batches):
        set_grad_sync(model, sync_every_micro_batch or i == len(micro_batches) - 1)
        loss, stats = loss_fn(model, batch, step_count)
        loss.backward()
        loss_sum += loss.detach()
        for k, v in stats.items():
            stat_sums[k] = stat_sums.get(k, 0) + v.detach()
    if max_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    # One all-reduce for the loss and every stat (one host sync, not one per number).
    names = list(stat_sums)
    totals = all_reduce_sum(torch.stack([loss_sum] + [stat_sums[k].float() for k in names]))
    out = {"loss": totals[0].item(), "grad_norm": grad_norm.item(), "lr": lr, "count": count.item()}
    for k, v in zip(names, (totals[1:] / step_count).tolist()):
        out[k] = v
    return out
