"""Every collective's tensor lives on a device that the process group of a GPU job serves.

On CPU (gloo) every tensor is a CPU tensor, so this holds only if the group the engine builds for
a CUDA job serves CPU tensors too: a plain NCCL group (what the first version built) serves CUDA
tensors only, and its first multi-GPU SFT step (token counts) and cached-reference DPO run
(reference sums) would have stopped there. Spied: every call through torch.distributed's
module-level collectives (the engine's reductions and broadcasts, DCP's object collectives);
FSDP2's all-gathers and reduce-scatters call the process group directly, on the device its
parameters live on (world.device), so they cannot meet a device the group does not serve."""
import pytest

from ie_engine.engine import parallel

from recipe_utils import FAST, REPO, free_port

pytestmark = pytest.mark.slow


def spy_run(tmp_path, recipe, args, out):
    import subprocess
    import sys

    from recipe_utils import child_env
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(REPO / "tests" / "recipes" / "collective_spy.py"), recipe, *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**child_env(), "SPY_OUT": str(out)}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_collectives_only_get_tensors_the_gpu_group_serves(tmp_path, cache_dir, sft_run):
    spied = tmp_path / "devices"
    spy_run(tmp_path, "sft", [*FAST, f"data.cache_dir={cache_dir}", f"output_dir={tmp_path / 'sft'}",
                              "max_steps=2", "data.rows_per_micro_batch=1"], spied)
    spy_run(tmp_path, "dpo", [*FAST, f"data.cache_dir={cache_dir}", f"output_dir={tmp_path / 'dpo'}",
                              f"model.checkpoint={sft_run / 'final'}", "max_steps=1", "data.rows_per_micro_batch=1"],
            spied)
    seen = set()
    for f in tmp_path.glob("devices.*"):
        seen |= set(f.read_text().split())
    ops = {s.split(":")[0] for s in seen}
    assert {"all_reduce", "broadcast_object_list"} <= ops, seen
    served = parallel.served_device_types(parallel.process_group_backend("cuda"))
    assert {s.split(":")[1] for s in seen} <= served, (seen, served)
