"""Direct preference optimisation (ADELIE stage 2) on packed preference pairs.

    torchrun --nproc_per_node N recipes/dpo.py [--config FILE] [key=value ...]

With no arguments: the embedded default, starting from recipes/sft.py's default output
(runs/sft/final) on the bundled IEFeedback-style pairs, writing runs/dpo/.

Reference log-probs: with dpo.reference=cached (default) the starting model scores every pair
once, in a first sharded no-grad pass, and the result is cached beside the token cache, so
training holds one model; dpo.reference=frozen keeps a second, frozen model instead. The loss
runs through the fused head (per-token log-probs -> per-sequence sums) and the fused DPO kernel.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np  # noqa: E402
import torch

from ie_engine.data.files import open_atomic
from ie_engine.engine import launch, parallel
from ie_engine.engine.config import ConfigError, parse_config
from ie_engine.engine.run_config import PREFERENCE_LOSSES, DPOConfig
from ie_engine.engine.train import fit
from ie_engine.engine.train.batching import to_device
from ie_engine.engine.train.data_setup import prepare_data
from ie_engine.engine.train.losses import preference_loss, score_documents
from ie_engine.engine.train.model_setup import build_and_load

CONFIG = DPOConfig  # the schema of this recipe's config
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "dpo_default.yaml"
# What the cached reference log-probs depend on besides the model and the data: the code that
# computes them. A change to any of these files gives a new cache key.
_SCORING_CODE = ("engine/model/transformer.py", "engine/model/attention.py", "engine/train/losses.py", "kernels/fused_linear_logprob.py",
                 "kernels/rms_norm.py", "kernels/rope.py", "kernels/swiglu.py")


def count_pairs(batch) -> int:
    return batch["num_docs"] // 2


def reference_cache_key(cfg: DPOConfig, world: parallel.World, model) -> str:
    """Everything the reference log-probs depend on: the starting weights (files, sizes, mtimes,
    or preset + seed), the compute precision and attention backend, and the scoring code."""
    source = cfg.model.checkpoint or f"{cfg.model.preset}-seed{cfg.seed}"
    files = sorted(Path(cfg.model.checkpoint).glob("*.safetensors")) if cfg.model.checkpoint else []
    root = Path(__file__).resolve().parents[1]
    code = hashlib.sha256(b"".join((root / f).read_bytes() for f in _SCORING_CODE if (root / f).exists())).hexdigest()
    precision = parallel.resolve_precision(cfg.parallel, world.device)
    backend = model.cfg.attn_backend
    parts = [source, [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files], precision, backend,
             world.device.type, code]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def reference_logps(cfg: DPOConfig, world: parallel.World, model, cache) -> np.ndarray:
    """(num_pairs, 2) summed log-probs of chosen / rejected under the starting model, computed
    once (rows split across ranks, no grad) and cached beside the token cache. Rank 0 decides
    whether the cache file exists and tells the others (on node-local disks they could disagree,
    and a rank that skipped the scoring pass would hang the others' collectives)."""
    path = Path(cache.path) / f"ref_logps-{reference_cache_key(cfg, world, model)}.npy"
    if parallel.broadcast_object(path.exists() if world.rank == 0 else None):
        return parallel.broadcast_object(np.load(path) if world.rank == 0 else None)
    sums = torch.zeros(cache.num_pairs, 2, dtype=torch.float64)
    rows = np.arange(cache.num_rows)
    per_rank = -(-cache.num_rows // world.world_size)
    mine = rows[world.rank::world.world_size]
    step = cfg.data.rows_per_micro_batch
    flash = model.cfg.attn_backend == "flash"
    model.eval()
    with torch.no_grad():  # every rank runs the same number of forwards (FSDP collectives)
        for i in range(0, per_rank, step):
            chunk = mine[i:i + step]
            batch = to_device(cache.batch(chunk if len(chunk) else rows[:1]), world.device, with_cu_seqlens=flash)
            logps = score_documents(model, batch).double().cpu().view(-1, 2)
            if len(chunk):
                sums[batch["pair_index"].cpu()] = logps
    parallel.reshard(model)
    model.train()
    parallel.all_reduce_sum(sums)  # each pair was scored by exactly one rank
    if world.rank == 0:
        with open_atomic(path) as f:
            np.save(f, sums.numpy())
    return sums.numpy()


def main(argv=None):
    cfg = parse_config(CONFIG, launch.with_default_config(argv, DEFAULT_CONFIG))  # 1. config (checked)
    if cfg.model.checkpoint and not Path(cfg.model.checkpoint).exists():
        raise ConfigError(f"model.checkpoint {cfg.model.checkpoint} does not exist"
                          + (" (run recipes/sft.py first)" if "runs/sft" in cfg.model.checkpoint else ""))
    world = launch.start(cfg)                                                      # 2. distributed
    try:
        cache, tokenizer = prepare_data(cfg, world, "dpo")                        # 3. tokenizer + data
        heldout, _ = prepare_data(cfg, world, "dpo", heldout=True)
        model = build_and_load(cfg, world, cache.vocab_size)                      # 4. model
        if PREFERENCE_LOSSES[cfg.dpo.loss_type][2]:                                # 5. reference log-probs
            add_reference = add_heldout_reference = None  # reference-free (simpo)
        elif cfg.dpo.reference == "cached":

            def cached_reference(c):
                ref = torch.from_numpy(reference_logps(cfg, world, model, c)).float()

                def add(batch):
                    batch["ref_logps"] = ref[batch["pair_index"].cpu()].flatten()
                    return batch
                return add
            add_reference = cached_reference(cache)
            add_heldout_reference = cached_reference(heldout) if heldout else None
        else:
            ref_model = build_and_load(cfg, world, cache.vocab_size, trainable=False)

            def add_reference(batch):
                with torch.no_grad():
                    batch["ref_logps"] = score_documents(ref_model, batch)
                parallel.reshard(ref_model)
                return batch
            add_heldout_reference = add_reference

        def loss_fn(model, batch, num_pairs):
            return preference_loss(model, batch, num_pairs, cfg.dpo)

        run = fit.setup_training(cfg, world, model, cache)                        # 6. optimizer, resume
        evaluate = (lambda: fit.evaluate(run, heldout, loss_fn, count_pairs, add_heldout_reference)) if heldout else None
        fit.train(run, loss_fn, count_pairs, add_reference, evaluate)             # 7. the loop (+ held-out)
        fit.finish(run, tokenizer)                                                # 8. final state + export
    finally:
        parallel.destroy_distributed()


if __name__ == "__main__":
    launch.run_recipe(main)
