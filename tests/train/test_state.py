"""engine/train/checkpoint.py: resuming reproduces training; crashes mid-save and pruning.

The reference for a resumed run is the uninterrupted run: 2 ranks (FSDP2, gloo) train 3 steps,
save, train 2 more; a fresh launch loads the step-3 state into a differently initialised model
and trains the same 2 steps. The training loop draws from the torch, numpy and python RNGs, so
the losses only agree if every rank's RNG states came back too.
"""
from __future__ import annotations

import os
import random

import _dist_worker as W
import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

from ie_engine.engine.model.transformer import build_model
from ie_engine.engine.parallel import ParallelConfig, materialize, parallelize
from ie_engine.engine.train import checkpoint as train_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("state")
    root = tmp / "ckpt"
    W.launch("state_first", str(tmp / "first.npz"), str(root))
    first = dict(np.load(tmp / "first.npz"))
    listing = sorted(p.name for p in root.iterdir())
    W.launch("state_resume", str(tmp / "resumed.npz"), str(root))
    return first, dict(np.load(tmp / "resumed.npz")), root, listing


def test_resume_on_two_ranks_reproduces_losses(resumed):
    first, again, root, listing = resumed
    assert listing == ["step-00000003", "step-00000005"]
    assert int(again["step"]) == 3 and int(again["cursor"]) == 12
    np.testing.assert_array_equal(again["loss"], first["loss"])  # same sharding: bit for bit
    np.testing.assert_array_equal(again["lr"], first["lr"])
    names = [k for k in first if k.startswith("param/")]
    assert all(np.array_equal(again[k], first[k]) for k in names)


def test_saved_names_are_metas(resumed):
    _, _, root, _ = resumed
    path = root / "step-00000003"
    keys = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    expected = {f"model.{n}" for n in W.plain_model().state_dict()}
    assert expected <= keys  # block 1 was checkpoint-wrapped in that run
    assert not any("_checkpoint_wrapped_module" in k for k in keys)
    assert any(k.startswith("optimizer.state.layers.1.attention.wq.weight") for k in keys)
    assert (path / "config.yaml").read_text() == "model: tiny\n"


# ------------------------------------------------------------------------------------------
# one process




def fsdp_run(world, seed: int = 0):
    pcfg = ParallelConfig()
    model = parallelize(build_model(W.tiny_config(), "meta"), pcfg, world)
    materialize(model, world, pcfg, seed)
    opt = W.make_optimizer(model)
    return model, opt, W.make_scheduler(opt)


def test_crash_mid_save_keeps_previous_loadable(world1, tmp_path, monkeypatch):
    model, opt, sched = fsdp_run(world1)
    batches = W.global_batches(3)
    W.train(model, opt, batches[:1], sched=sched)
    saved = train_checkpoint.save_state(tmp_path, 1, model, opt, sched, {"cursor": 4})
    expected = W.params_of(model)
    W.train(model, opt, batches[1:2], sched=sched)

    def crash():  # after the model and optimizer shards are written, before COMPLETE
        raise RuntimeError("simulated crash")
    monkeypatch.setattr(train_checkpoint, "_rng_state", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_checkpoint.save_state(tmp_path, 2, model, opt, sched, {"cursor": 8})
    monkeypatch.undo()
    assert (tmp_path / "step-00000002.tmp" / ".metadata").exists()
    (tmp_path / "step-00000009").mkdir()  # no COMPLETE: also not a checkpoint

    assert train_checkpoint.latest_state(tmp_path) == saved
    fresh, opt2, sched2 = fsdp_run(world1, seed=5)
    step, extra = train_checkpoint.load_state(saved, fresh, opt2, sched2)
    assert (step, extra) == (1, {"cursor": 4})
    got = W.params_of(fresh)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    # Both continue identically from there.
    model3, opt3, sched3 = fsdp_run(world1, seed=9)
    train_checkpoint.load_state(saved, model3, opt3, sched3)
    assert W.train(fresh, opt2, batches[1:], sched=sched2) == W.train(model3, opt3, batches[1:], sched=sched3)

    train_checkpoint.save_state(tmp_path, 3, fresh, opt2, sched2, {})  # cleans up after the crash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001", "step-00000003"]


def test_keep_newest_and_never_the_one_just_written(tmp_path):
    """No process group and no FSDP: a plain model in a plain process."""
    model = W.plain_model()
    opt = W.make_optimizer(model)
    for step in range(1, 5):
        train_checkpoint.save_state(tmp_path, step, model, opt, None, {"step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003", "step-00000004"]
    # Saving an older step (after resuming from it) keeps it even with keep=1.
    train_checkpoint.save_state(tmp_path, 2, model, opt, None, {}, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002"]
    with pytest.raises(ValueError, match="keep"):
        train_checkpoint.save_state(tmp_path, 5, model, opt, None, {}, keep=0)


def test_rng_and_model_only_round_trip(tmp_path):
    model = W.plain_model(seed=0)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    path = train_checkpoint.save_state(tmp_path, 7, model, None, None, {"a": [1, 2]}, config_text=None)
    draws = (torch.rand(3), np.random.normal(size=3), [random.random() for _ in range(3)])
    other = W.plain_model(seed=1)
    assert train_checkpoint.load_state(path, other) == (7, {"a": [1, 2]})
    again = (torch.rand(3), np.random.normal(size=3), [random.random() for _ in range(3)])
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters()))
    assert not (path / "config.yaml").exists() and os.path.exists(path / "COMPLETE")


def test_incomplete_directory_refuses_to_load(tmp_path):
    (tmp_path / "step-00000001").mkdir()
    with pytest.raises(FileNotFoundError, match="COMPLETE"):
        train_checkpoint.load_state(tmp_path / "step-00000001", W.plain_model())
    assert train_checkpoint.latest_state(tmp_path) is None and train_checkpoint.latest_state(tmp_path / "nope") is None
