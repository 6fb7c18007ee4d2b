"""Helpers for recipe tests: `torchrun` launches of the recipes (CPU, gloo) and their metrics."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Small, fast settings shared by every recipe test: the debug model on short rows.
FAST = ["data.seq_len=256", "data.rows_per_micro_batch=2", "global_batch_rows=4",
        "optim.warmup_ratio=0.0", "parallel.timeout_s=120"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(recipe: str, nproc: int, args: list[str], extra: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", *(extra or []), str(REPO / "recipes" / recipe), *args]


def child_env(gpu: bool = False) -> dict:
    """The environment of a launched recipe: CPU (gloo, CUDA hidden) unless gpu, so the CPU tests
    of the distributed path run the same on a GPU host."""
    env = {**os.environ, "ENGINE_NO_BAR": "1", "OMP_NUM_THREADS": "1"}
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run(cmd: list[str], cwd: Path, timeout: int = 300, gpu: bool = False) -> subprocess.CompletedProcess:
    env = child_env(gpu)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (output_dir / "metrics.jsonl").read_text().splitlines() if l]


