"""Distribution: process group, device mesh, and the wrapping of a model for data parallelism.

The only place that wraps the model. The recipe's order (as torchtitan):

    world = init_distributed(pcfg.timeout_s)
    model = build_model(cfg, "meta")           # the model knows nothing of distribution
    model = parallelize(model, pcfg, world)    # 1) activation checkpointing 2) compile 3) FSDP2
    materialize(model, world, pcfg, seed)      # to_empty + init_weights + RoPE tables (or load)

Contracts the trainer relies on:
- Every process, even a plain `python recipes/sft.py`, runs in a process group (a 1-process
  group over an in-memory store when there is no torchrun), and every model is FSDP2-wrapped,
  so a 1-process run takes the same code path as an N-process one.
- Gradients are SUMMED over the data-parallel ranks, not averaged (FSDP2's default): the
  trainer divides the loss by the valid-token count of the whole step across all ranks, and
  the sum of the ranks' gradients is then the gradient of that global loss. `parallelize`
  sets this; `set_gradient_sum` is the switch.
- Mixed precision "bf16": parameters and optimizer state stay fp32 (master weights), blocks
  compute in bf16 (FSDP2 all-gathers bf16 copies), gradients are reduced in fp32.
  "pure_bf16": parameters themselves are bf16 (half the memory, lossy updates); gradients are
  still reduced in fp32. "fp32": no casts. "auto": bf16 on CUDA, fp32 on CPU.
- Losses that fuse the head run inside forward (`model(..., head_fn=...)`), where FSDP has
  gathered `model.output.weight`; its gradient is reduced with the rest. The root keeps its own
  parameters gathered after forward (backward needs the head first); after a forward under
  no_grad (a DPO reference model, generation), `reshard(model)` frees them.
- Block inputs are NOT cast by FSDP (cast_forward_inputs=False): the hidden state is already
  in the compute dtype (it comes out of the bf16 embedding), and the fp32 RoPE tables that
  blocks receive must stay fp32 (a bf16 angle table is off by up to 2^-8 relative).
- Activation checkpointing wraps blocks with checkpoint_wrapper, which inserts
  `_checkpoint_wrapped_module` into `named_parameters()` names; `model.state_dict()` and the
  torch.distributed.checkpoint.state_dict API strip it, so saved names stay Meta's
  (`layers.0.attention.wq.weight`). Compile uses `nn.Module.compile()` in place, which adds
  no `_orig_mod` to names.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as tdist
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from ie_engine.engine.config import ConfigError
from ie_engine.engine.run_config import ParallelConfig

Precision = Literal["bf16", "pure_bf16", "fp32"]


@dataclass
class World:
    """This process's place in the job. One name for it everywhere: `world`."""
    rank: int
    """Global rank."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Rank on this node (selects the GPU)."""
    device: torch.device
    """cuda:local_rank, or cpu."""
    backend: str
    """The process group's backends: "cpu:gloo,cuda:nccl" on GPU, "gloo" on CPU."""


def process_group_backend(device_type: str) -> str:
    """The backends of the default group for a job on `device_type`. On GPU, NCCL serves CUDA
    tensors only; gloo beside it serves the CPU tensors that object collectives (DCP's
    metadata exchange) and small host-side counters use, so no collective can meet a device
    its group does not serve. all_reduce_sum/broadcast below still move tensors to the compute
    device: NCCL is the fast path."""
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"


def served_device_types(backend: str) -> set[str]:
    """The tensor device types a process-group backend string serves ("gloo" -> {"cpu"},
    "nccl" -> {"cuda"}, "cpu:gloo,cuda:nccl" -> {"cpu", "cuda"})."""
    if ":" not in backend:
        return {"nccl": {"cuda"}, "gloo": {"cpu"}}.get(backend, set())
    return {part.split(":")[0] for part in backend.split(",")}


def init_distributed(timeout_s: int = 600, device_type: str | None = None) -> World:
    """Join (or create) the default process group; idempotent.

    Under torchrun the RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT environment is used.
    Without it (plain `python recipe.py`) a 1-process group is made over an in-memory HashStore:
    no port to pick, and the FSDP code path stays the same as with N processes.
    device_type: "cuda" when CUDA is available, else "cpu" (tests of the CPU path pass "cpu").
    """
    cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    backend = process_group_backend(device.type)
    if cuda:
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        # device_id binds NCCL to this rank's GPU eagerly (barriers then know their device).
        kw = {"device_id": device} if cuda else {}
        if "WORLD_SIZE" in os.environ:
            tdist.init_process_group(backend, timeout=timeout, **kw)
        else:
            tdist.init_process_group(backend, store=tdist.HashStore(), rank=0, world_size=1,
                                     timeout=timeout, **kw)
    return World(tdist.get_rank(), tdist.get_world_size(), local_rank, device, backend)


def is_rank0() -> bool:
    """True on global rank 0, and in a process without a group (the one way to ask)."""
    return not (tdist.is_available() and tdist.is_initialized()) or tdist.get_rank() == 0


def comm_device() -> torch.device:
    """Where collectives' tensors go: this rank's GPU under NCCL, else the CPU."""
    if torch.cuda.is_available() and tdist.is_initialized() and "nccl" in str(tdist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """A barrier over all ranks; nothing in a process without a group."""
    if tdist.is_initialized():
        tdist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum x over all ranks in place and return it; x itself without a group of several.
    The one helper for the engine's own reductions: a tensor on another device than the
    communication device (a CPU counter under NCCL) is reduced there and copied back."""
    if tdist.is_initialized() and tdist.get_world_size() > 1:
        dev = comm_device()
        y = x if x.device == dev else x.to(dev)
        tdist.all_reduce(y)
        if y is not x:
            x.copy_(y)
    return x


def broadcast_object(obj, src: int = 0):
    """rank src's `obj` (any picklable value) on every rank; obj itself without a group."""
    if tdist.is_initialized() and tdist.get_world_size() > 1:
        box = [obj]
        tdist.broadcast_object_list(box, src=src, device=comm_device())
        return box[0]
    return obj


def destroy_distributed() -> None:
    """Barrier, then tear the group down: a rank that finishes first must not close the
    connections a slower rank is still using (gloo aborts that rank)."""
    if tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def build_mesh(world: World, dp_replicate: int = 1) -> DeviceMesh:
    """1-D ("dp_shard",) mesh for FSDP, or 2-D ("dp_replicate", "dp_shard") for HSDP: shard
    within a group of world_size // dp_replicate ranks, replicate across the groups."""
    if dp_replicate < 1 or world.world_size % dp_replicate:
        raise ConfigError(f"parallel.dp_replicate ({dp_replicate}) must be >= 1 and "
                          f"divide the number of processes ({world.world_size})")
    if dp_replicate == 1:
        return init_device_mesh(world.device.type, (world.world_size,), mesh_dim_names=("dp_shard",))
    return init_device_mesh(world.device.type, (dp_replicate, world.world_size // dp_replicate),
                            mesh_dim_names=("dp_replicate", "dp_shard"))


def resolve_precision(pcfg: ParallelConfig, device: torch.device) -> Precision:
    if pcfg.mixed_precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return pcfg.mixed_precision


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int = 2) -> None:
    """Wrap blocks of `model.layers` in place: all of them ("full") or the k-th, 2k-th, ...
    ("every_k"). Non-reentrant checkpointing, so it composes with FSDP2 and compile."""
    if mode == "none":
        return
    if mode not in ("full", "every_k"):
        raise ConfigError(f"config key 'parallel.activation_checkpointing': unknown mode {mode!r}")
    if mode == "every_k" and every < 1:
        raise ConfigError(f"config key 'parallel.ac_every' must be >= 1, got {every}")
    for i, key in enumerate(list(model.layers.keys())):
        if mode == "full" or (i + 1) % every == 0:
            # The model has no dropout, so there is no RNG state to replay in recomputation.
            model.layers[key] = checkpoint_wrapper(model.layers[key], preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    """torch.compile each block in place (Module.compile keeps the module and its names).
    Per block rather than whole-model: one compiled graph serves every block, and FSDP2's
    per-block hooks stay outside the graphs."""
    for block in model.layers.values():
        block.compile()


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, precision: Precision,
               reshard_after_forward: bool = True) -> None:
    """fully_shard each block (one all-gather / reduce-scatter unit each), then the root,
    which takes what is left: embeddings, final norm, head. A 2-D mesh gives HSDP."""
    if precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    elif precision == "pure_bf16":  # bf16 parameters, but sum gradients across ranks in fp32
        mp = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()
    # Blocks take the fp32 RoPE tables as inputs: they must not be cast (module docstring).
    block_mp = MixedPrecisionPolicy(param_dtype=mp.param_dtype, reduce_dtype=mp.reduce_dtype,
                                    cast_forward_inputs=False)
    for block in model.layers.values():
        fully_shard(block, mesh=mesh, mp_policy=block_mp, reshard_after_forward=reshard_after_forward)
    # The root keeps its parameters gathered after forward: backward needs the head first,
    # and losses that fuse the head read model.output.weight after forward (see above).
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)


def set_gradient_sum(model: nn.Module) -> None:
    """Make FSDP2 SUM gradients across data-parallel ranks instead of averaging them.

    The divide factor is per FSDP unit, so it is set on the root and on every block. Where
    this torch has it, comms are also forced to plain SUM: a factor alone makes FSDP2 use
    PreMulSum(1.0), which costs NCCL an extra scaling pass and which gloo rejects ("Cannot use
    ReduceOp.PREMUL_SUM with Gloo"). No-op for a model that is not FSDP-wrapped.
    """
    for module in model.modules():
        if isinstance(module, FSDPModule):
            if hasattr(module, "set_gradient_divide_factor"):
                module.set_gradient_divide_factor(1.0)
            else:  # its older name
                module.set_reduce_scatter_divide_factor(1.0)
            if hasattr(module, "set_force_sum_reduction_for_comms"):
                module.set_force_sum_reduction_for_comms(True)


def set_grad_sync(model: nn.Module, sync: bool) -> None:
    """Whether the next backward reduce-scatters gradients. False keeps unsharded fp32
    gradients locally until a backward with True (engine/train/step.py states what each choice
    costs in memory). No-op when not FSDP-wrapped."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)


def parallelize(model: nn.Module, pcfg: ParallelConfig, world: World) -> nn.Module:
    """Wrap a model built on `meta`, in place, in torchtitan's order: activation checkpointing
    (innermost, so recomputation happens inside FSDP's gathered parameters), then compile
    (so each compiled graph includes the checkpointing), then FSDP2 (outermost). Gradients
    are set to SUM across ranks (see the module docstring). Returns the same model."""
    mesh = build_mesh(world, pcfg.dp_replicate)
    # 1) activation checkpointing
    apply_activation_checkpointing(model, pcfg.activation_checkpointing, pcfg.ac_every)
    # 2) compile
    if pcfg.compile:
        apply_compile(model)
    # 3) FSDP2 (HSDP on a 2-D mesh)
    apply_fsdp(model, mesh, resolve_precision(pcfg, world.device), pcfg.reshard_after_forward)
    set_gradient_sum(model)
    return model


def materialize(model: nn.Module, world: World, pcfg: ParallelConfig, seed: int) -> None:
    """Allocate the (sharded) parameters on this rank's device and initialise them (and the
    fp32 RoPE tables); with pure_bf16 they are stored in bf16. The same seed gives the same
    model for any sharding."""
    if resolve_precision(pcfg, world.device) == "pure_bf16":
        model.to(torch.bfloat16)  # still on meta: the fp32 copy is never allocated
    model.to_empty(device=world.device)
    model.init_weights(seed)


def load_full_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor],
                         broadcast_from_rank0: bool = False) -> None:
    """Copy a full (unsharded, usually CPU) state dict with Meta's names into a possibly
    sharded model; each rank keeps its own shard, cast to the parameter's dtype.

    broadcast_from_rank0: only rank 0 needs to hold the full dict (others pass {}), which
    saves host memory when many ranks share a node; it is sent tensor by tensor."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=broadcast_from_rank0,
                               strict=True)
    set_model_state_dict(model, state_dict, options=options)


def reshard(model: nn.Module) -> None:
    """Free the gathered parameters after forwards that had no backward (no-grad scoring
    passes). FSDP2 keeps the root's parameters unsharded after forward for the backward that
    usually follows; without one, `model.parameters()` would stay the unsharded tensors, and
    an optimizer built then would hold the wrong ones."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def exit_process(code: int = 0) -> None:
    """End a finished run without interpreter teardown. The process groups stay referenced by
    FSDP's state until Python finalises everything, and about 1 launch in 30 on CPU a rank then
    died in gloo's thread teardown (SIGABRT, "terminate called without an active exception"):
    after the run had saved its results, yet torchrun reported the job as failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
