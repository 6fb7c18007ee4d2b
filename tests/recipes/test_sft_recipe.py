"""SFT recipe: the embedded default runs end to end; 2 ranks equal 1 process; k micro-batches
equal one k-times-larger batch; kill -9 then resume reproduces the uninterrupted losses; two
torchrun agents started as two nodes train together."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from recipe_utils import FAST, REPO, child_env, free_port, metrics, run, torchrun_cmd


def losses(output_dir):
    return [m["loss"] for m in metrics(output_dir)]


def test_default_sft_runs_end_to_end(sft_run):
    rows = metrics(sft_run)
    assert [r["step"] for r in rows] == list(range(1, 7))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_gb"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert rows[-1]["loss"] < rows[0]["loss"]
    final = sft_run / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.model").exists()
    assert (sft_run / "loss.png").stat().st_size > 0
    from ie_engine.engine.model.hf_checkpoint import load_hf
    assert load_hf(final).num_params() > 0


def test_two_ranks_equal_sft_run_and_accumulation_equals_big_batch(sft_run, tmp_path, cache_dir):
    """Same global batch (4 rows) three ways: 1 rank x 4 rows, 2 ranks x 2 rows, and 1 rank x
    2 micro-batches of 2 rows (accumulation)."""
    two = tmp_path / "two"
    run(torchrun_cmd("sft.py", 2, [*FAST, f"data.cache_dir={cache_dir}", f"output_dir={two}", "max_steps=6"]), cwd=tmp_path)
    accum = tmp_path / "accum"
    run(torchrun_cmd("sft.py", 1, [*FAST, f"data.cache_dir={cache_dir}", f"output_dir={accum}", "max_steps=6"]), cwd=tmp_path)
    ref = torch.tensor(losses(sft_run), dtype=torch.float64)
    for other in (two, accum):
        got = torch.tensor(losses(other), dtype=torch.float64)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)


def test_kill9_then_resume_reproduces_uninterrupted_losses(sft_run, tmp_path, cache_dir):
    out = tmp_path / "killed"
    args = [*FAST, f"data.cache_dir={cache_dir}", f"output_dir={out}", "max_steps=6", "save_every=2",
            "data.rows_per_micro_batch=4"]
    env = child_env()
    proc = subprocess.Popen(torchrun_cmd("sft.py", 1, args), cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill -9 the whole job as soon as step 4's checkpoint is complete
        if (out / "checkpoints" / "step-00000004").exists():
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists() and len(metrics(out)) < 6, "the run finished before the kill"
    run(torchrun_cmd("sft.py", 1, args), cwd=tmp_path)
    assert losses(out) == losses(sft_run)  # exact: bit-for-bit the same floats


def test_two_nodes_on_localhost_train_together(sft_run, tmp_path, cache_dir):
    out = tmp_path / "nodes"
    port = free_port()
    args = [*FAST, f"data.cache_dir={cache_dir}", f"output_dir={out}", "max_steps=6"]
    env = child_env()
    cmds = [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             f"--node_rank={r}", "--master_addr=127.0.0.1", f"--master_port={port}",
             str(REPO / "recipes" / "sft.py"), *args] for r in (0, 1)]
    procs = [subprocess.Popen(c, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in cmds]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    ref = torch.tensor(losses(sft_run), dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(losses(out), dtype=torch.float64), ref, rtol=1e-5, atol=0)


def test_a_dead_rank_ends_the_job(tmp_path, cache_dir):
    """SIGKILL one of two ranks mid-training: torchrun ends the whole job (no hang)."""
    out = tmp_path / "dead"
    args = [*FAST, f"data.cache_dir={cache_dir}", f"output_dir={out}", "max_steps=1000"]
    proc = subprocess.Popen(torchrun_cmd("sft.py", 2, args), cwd=tmp_path, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not ((out / "metrics.jsonl").exists() and len(metrics(out)) >= 2):
            assert proc.poll() is None and time.time() < deadline, "training never started"
            time.sleep(0.2)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2
        os.kill(int(workers[1]), signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
