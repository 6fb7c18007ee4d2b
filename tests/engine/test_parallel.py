"""engine/parallel.py: FSDP2 and HSDP on 2 CPU ranks (gloo) against a single plain process.

The reference is an unwrapped model trained on the whole global batch in this process; the
2-rank runs (one torchrun launch, see _dist_worker.py) split each batch across ranks and rely
on parallelize() making gradients SUM across ranks. The 1-process group that a plain `python
recipe.py` gets, and activation checkpointing, are tested in this process.
"""
from __future__ import annotations

import _dist_worker as W
import numpy as np
import pytest
import torch
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from ie_engine.engine.config import ConfigError
from ie_engine.engine.model.transformer import build_model
from ie_engine.engine.parallel import ParallelConfig, World, build_mesh, materialize, parallelize

from helpers import rel_err


def reference(n_steps: int = 3, micro: int = 1):
    """Losses, first-step gradients and final parameters of one plain process."""
    model = W.plain_model(seed=0)
    grads: dict = {}
    losses = W.train(model, W.make_optimizer(model), W.global_batches(3)[:n_steps], micro=micro,
                     first_grads=grads)
    return np.array(losses), grads, W.params_of(model)



pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel") / "out.npz"
    W.launch("parallel", str(out))
    return dict(np.load(out))


@pytest.fixture(scope="module")
def ref():
    return reference()


@pytest.mark.parametrize("tag", ["fsdp", "hsdp", "fsdp_accum", "fsdp_accum_sync_last", "fsdp_head_fn"])
def test_two_ranks_match_one_process(two_ranks, ref, tag):
    """fsdp: 1-D mesh of 2 shards. hsdp: 2 replicas x 1 shard. fsdp_accum: 2 micro-batches
    per rank, gradients reduce-scattered after each (the default), plus activation
    checkpointing; fsdp_accum_sync_last: the same with sync only on the last micro-batch.
    fsdp_head_fn: the head applied through forward's head_fn, the path the fused losses take.
    Optimizer: the engine's AdamW (foreach on CPU). Tolerances: loss and first-step gradients
    1e-6 relative, parameters after 3 steps 1e-5 relative."""
    losses, grads, params = ref
    errs = {"loss": rel_err(two_ranks[f"{tag}/loss"], losses)}
    errs["grad"] = max(rel_err(two_ranks[f"{tag}/grad/{n}"], g) for n, g in grads.items())
    errs["param"] = max(rel_err(two_ranks[f"{tag}/param/{n}"], p) for n, p in params.items())
    print(tag, errs)
    # Parameters after 3 AdamW steps: last-bit gradient differences become ~1e-7 absolute.
    assert errs["loss"] < 1e-6 and errs["grad"] < 1e-6 and errs["param"] < 1e-5, errs


def test_mixed_precision_two_ranks(two_ranks):
    losses, grads, params = reference(n_steps=1)
    # bf16: fp32 master weights (and so fp32 gradients and updates), bf16 compute.
    assert str(two_ranks["bf16/param_dtype"]) == "torch.float32"
    assert all(two_ranks[f"bf16/grad/{n}"].dtype == np.float32 for n in grads)
    loss_err = rel_err(two_ranks["bf16/loss"], losses)
    grad_err = max(rel_err(two_ranks[f"bf16/grad/{n}"], g) for n, g in grads.items())
    print("bf16", loss_err, grad_err)
    # fp32 runs agree to ~3e-7 (above): an error this size shows the compute ran in bf16.
    assert loss_err < 1e-2 and 1e-4 < grad_err < 5e-2
    # pure_bf16: the parameters themselves are bf16.
    assert str(two_ranks["pure_bf16/param_dtype"]) == "torch.bfloat16"
    assert rel_err(two_ranks["pure_bf16/loss"], losses) < 1e-2


def test_load_full_state_dict_into_shards(two_ranks):
    expected = W.plain_model(seed=7)(W.global_batches(1)[0][0]).detach().numpy()
    for tag in ("load_full", "load_bcast"):
        np.testing.assert_allclose(two_ranks[f"{tag}/logits"], expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# one process: the group a plain `python recipe.py` gets




def wrapped(world, **kw):
    pcfg = ParallelConfig(**kw)
    model = parallelize(build_model(W.tiny_config(), "meta"), pcfg, world)
    materialize(model, world, pcfg, seed=0)
    return model


def test_one_process_group_matches_plain(world1, ref):
    assert (world1.rank, world1.world_size, world1.backend) == (0, 1, "gloo")
    losses, grads, params = ref
    model = wrapped(world1)
    out_grads: dict = {}
    out = W.train(model, W.make_optimizer(model), W.global_batches(3), first_grads=out_grads)
    assert rel_err(out, losses) < 1e-6
    assert max(rel_err(out_grads[n], g) for n, g in grads.items()) < 1e-6
    assert max(rel_err(W.params_of(model)[n], p) for n, p in params.items()) < 1e-6


@pytest.mark.parametrize("mode", ["full", "every_k"])
def test_activation_checkpointing_is_exact(world1, mode):
    batches = W.global_batches(2)
    runs = {}
    for m in ("none", mode):
        model = wrapped(world1, activation_checkpointing=m, ac_every=2)
        grads: dict = {}
        losses = W.train(model, W.make_optimizer(model), batches, first_grads=grads)
        runs[m] = (losses, grads, W.params_of(model), model)
    (l0, g0, p0, _), (l1, g1, p1, model) = runs["none"], runs[mode]
    assert l0 == l1
    assert all(torch.equal(g0[n], g1[n]) for n in g0) and all(torch.equal(p0[n], p1[n]) for n in p0)
    # The wrapper really is there, and the saved names are still Meta's.
    wrapped_names = [n for n, _ in model.named_parameters() if "_checkpoint_wrapped_module" in n]
    assert len(wrapped_names) == (18 if mode == "full" else 9)
    plain_names = set(W.plain_model().state_dict())
    assert set(model.state_dict()) == plain_names
    assert set(get_model_state_dict(model)) == plain_names
    assert "layers.0.attention.wq.weight" in plain_names


def test_compile_keeps_names(world1):
    model = parallelize(build_model(W.tiny_config(), "meta"), ParallelConfig(compile=True,
                        activation_checkpointing="full"), world1)
    assert all(block._compiled_call_impl is not None for block in model.layers.values())
    assert set(model.state_dict()) == set(W.plain_model().state_dict())


def test_bad_dp_replicate_names_the_key():
    with pytest.raises(ConfigError, match="parallel.dp_replicate"):
        build_mesh(World(0, 2, 0, torch.device("cpu"), "gloo"), dp_replicate=3)
