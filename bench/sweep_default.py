"""The embedded default's budget sweep: train one point with recipes/sft.py (the embedded default
plus overrides), score its export with recipes/eval.py on the bundled held-out set, append one row
to bench/results/default_sweep.jsonl.

    python -m ie_engine.bench.sweep_default NAME [--nproc 1] [--threads T] [--out runs/sweep] [key=value ...]

A row: the point's name and settings (processes, threads, the sft overrides), optimizer steps,
SFT and eval wall seconds, the median training tokens/s, the 1-minute load average before and
after (the 2-core machine is shared: compare points by steps and F1, seconds only at equal load),
the held-out loss every eval_every steps (the copying phase shows as its drop) and the held-out
micro-F1 (%) per bundled task. Every point shares one data cache (OUT/cache), so the bundled data
and token caches are built once. Two points may run at once (each --nproc 1 --threads 1).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ie_engine.bench.common import REPO_ROOT, append_results

RECIPES = REPO_ROOT / "recipes"


def launch(recipe: str, args: list[str], nproc: int, threads: int | None, log: Path) -> float:
    """One recipe under torchrun (as recipes/adelie.py runs it); its output to `log`. -> wall s."""
    env = dict(os.environ, ENGINE_NO_BAR="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
           str(RECIPES / recipe), *args]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise SystemExit(f"{recipe} failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name", help="the point's name (its output folder under --out)")
    ap.add_argument("--nproc", type=int, default=1, help="torchrun processes (recipes/adelie.py's nproc_per_node)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per process (default: torchrun's)")
    ap.add_argument("--out", default="runs/sweep", help="root of every point's output and the shared cache")
    ap.add_argument("--note", default="", help="free text stored with the row")
    a, a.sft_args = ap.parse_known_args(argv)  # the rest: overrides of recipes/sft.py's default
    if bad := [x for x in a.sft_args if "=" not in x]:
        ap.error(f"not a key=value override: {bad}")
    out, cache = Path(a.out) / a.name, Path(a.out) / "cache"
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    sft_s = launch("sft.py", [f"data.cache_dir={cache}", f"output_dir={out / 'sft'}", "resume=never", *a.sft_args],
                   a.nproc, a.threads, out / "sft.log")
    eval_s = launch("eval.py", [f"eval.cache_dir={cache}", f"model.checkpoint={out / 'sft' / 'final'}",
                                f"output_dir={out / 'eval'}"], a.nproc, a.threads, out / "eval.log")
    steps = [json.loads(line) for line in (out / "sft" / "metrics.jsonl").read_text().splitlines() if line]
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    f1 = {k.split(":")[-1]: round(100 * v["f1"], 1) for k, v in metrics.items() if ":" in k}
    row = {"name": a.name, "nproc": a.nproc, "threads": a.threads, "sft_args": a.sft_args, "note": a.note,
           "steps": steps[-1]["step"], "sft_wall_s": round(sft_s, 1), "eval_wall_s": round(eval_s, 1),
           "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in steps)),
           "load_before": load_before, "load_after": os.getloadavg()[0],
           "final_loss": round(steps[-1]["loss"], 4),
           "heldout_loss": {r["step"]: round(r["eval_loss"], 4) for r in steps if "eval_loss" in r},
           "f1": f1, "f1_min": min(f1.values()), "f1_avg": round(sum(f1.values()) / len(f1), 1)}
    append_results("default_sweep", [row])
    return row


if __name__ == "__main__":
    main()
