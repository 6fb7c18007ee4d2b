"""Sharded, crash-safe, resumable training state (Hugging Face import/export is checkpoint.py).

One checkpoint is a directory `root/step-{step:08d}/`:

    .metadata, __*_*.distcp   model + optimizer, written by torch.distributed.checkpoint (DCP):
                              each rank writes its own shards, nothing is gathered; a later load
                              may use another world size or sharding (DCP reshards)
    scheduler.pt              the LR scheduler's state_dict (rank 0's; it is the same on all)
    meta.json                 {"step", "world_size", "extra"}: `extra` is rank 0's JSON-able
                              dict (data-loader/sampler position, ...), the same on every rank
    rng/rank-00000.pt         per-rank RNG states: torch CPU, CUDA, numpy, python `random`
    config.yaml               the resolved config text, when given
    COMPLETE                  written last: a directory without it is not a checkpoint

Nothing is unpickled: the .pt files hold only tensors and plain containers and are read with
torch.load(weights_only=True).

Crash safety: everything is written into `step-{step:08d}.tmp/`; after a barrier, rank 0
writes COMPLETE and renames the directory to its final name (an atomic rename on one file
system), so a crash mid-save leaves only a .tmp directory, which latest_state ignores and the
next save deletes. All ranks must see `root` (one shared file system across nodes).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                     set_state_dict)

from ie_engine.data.files import write_atomic
from ie_engine.engine.parallel import barrier

_STEP_DIR = re.compile(r"step-(\d{8})")


def _rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else 0


def _world_size() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else 1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def _complete_states(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.fullmatch(p.name)
        if m and p.is_dir() and (p / "COMPLETE").exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_state(root: str | Path) -> Path | None:
    """The newest complete checkpoint under root; .tmp directories and directories without
    COMPLETE (a crash mid-save) are ignored. None when there is none."""
    states = _complete_states(Path(root))
    return states[-1][1] if states else None


# ------------------------------------------------------------------------------------------
# RNG states: torch.save-able without pickling numpy or python objects


def _rng_state() -> dict:
    _, key, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next)
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ------------------------------------------------------------------------------------------


def save_state(root: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None,
               scheduler=None, extra: dict | None = None, config_text: str | None = None,
               keep: int = 2) -> Path:
    """Save the training state of `step` on every rank (a collective: all ranks call it) and
    return the final directory. Keeps the newest `keep` (>= 1) complete checkpoints, always
    including this one, and deletes leftovers of crashed saves."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the checkpoint just written is always kept), got {keep}")
    root = Path(root)
    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    meta = json.dumps({"step": step, "world_size": _world_size(), "extra": extra or {}}, indent=1)
    rank = _rank()
    if rank == 0:
        if tmp.exists():  # a crashed attempt at this very step
            shutil.rmtree(tmp)
        (tmp / "rng").mkdir(parents=True)
    barrier()

    no_dist = not tdist.is_initialized()  # a plain process: DCP then skips its collectives
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp, no_dist=no_dist)
    else:
        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=tmp, no_dist=no_dist)
    torch.save(_rng_state(), tmp / "rng" / f"rank-{rank:05d}.pt")
    if rank == 0:
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        write_atomic(tmp / "meta.json", meta, durable=True)
        if config_text is not None:
            write_atomic(tmp / "config.yaml", config_text, durable=True)
    barrier()  # every rank's files are on disk

    if rank == 0:
        write_atomic(tmp / "COMPLETE", f"step {step}\n", durable=True)
        if final.exists():  # saving the same step again: swap, then delete the old one
            stale = final.with_name(final.name + ".stale")
            shutil.rmtree(stale, ignore_errors=True)
            final.rename(stale)
        tmp.rename(final)
        _fsync_dir(root)
        _prune(root, final, keep)
    barrier()
    return final


def _prune(root: Path, final: Path, keep: int) -> None:
    # `final` plus the newest keep - 1 others. After resuming from an older checkpoint the
    # newest by step need not be `final`; newer ones (an abandoned run) are kept, not guessed at.
    others = [path for _, path in _complete_states(root) if path != final]
    for path in others[:max(0, len(others) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)
    for path in root.iterdir():  # crashed saves (.tmp), swapped-out ones (.stale), unmarked ones
        name = path.name
        if path.is_dir() and name.startswith("step-") and (
                name.endswith((".tmp", ".stale")) or not (path / "COMPLETE").exists()):
            shutil.rmtree(path, ignore_errors=True)


def load_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
               scheduler=None) -> tuple[int, dict]:
    """Restore model, optimizer and scheduler from a checkpoint directory, and this rank's RNG
    states (all ranks call it). The model must already be parallelized and materialized the
    same way as when training (the world size may differ). Returns (step, extra).
    With optimizer=None only the model is loaded."""
    path = Path(path)
    if not (path / "COMPLETE").exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no COMPLETE marker)")
    no_dist = not tdist.is_initialized()
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)  # templates: DCP loads in place
        dcp.load({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=path, no_dist=no_dist)
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    else:
        model_sd = get_model_state_dict(model)
        dcp.load({"model": model_sd}, checkpoint_id=path, no_dist=no_dist)
        set_model_state_dict(model, model_sd)
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    meta = json.loads((path / "meta.json").read_text())
    rng = path / "rng" / f"rank-{_rank():05d}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=True))
    else:  # more ranks than when saved: the new ranks keep their current RNG streams
        warnings.warn(f"{rng} does not exist (saved with world size {meta['world_size']}); "
                      f"this rank keeps its current RNG state")
    return meta["step"], meta["extra"]
