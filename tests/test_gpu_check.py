"""`python -m ie_engine.bench.gpu_check --dry-run` runs every stage's code path on CPU with tiny shapes: it
exits 0, prints the summary table, writes one gpu_check.jsonl row per stage (and the benchmarks'
own rows) to --out, and appends nothing to bench/results."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def results_state() -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (REPO / "bench" / "results").glob("*")}


def test_dry_run_writes_one_row_per_stage(tmp_path):
    from ie_engine.bench.gpu_check import build_stages

    stages = [s.name for s in build_stages(tmp_path)]
    before = results_state()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)  # the check sets what its stages need
    proc = subprocess.run([sys.executable, "-m", "ie_engine.bench.gpu_check", "--dry-run", "--out", str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]

    table = proc.stdout[proc.stdout.index("# gpu_check (dry-run)"):]
    assert table.splitlines()[1].split()[:3] == ["stage", "status", "s"]
    for name in stages:
        assert any(line.startswith(name + " ") for line in table.splitlines()), name

    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == stages
    for r in rows:
        assert r["mode"] == "dry-run" and r["git_sha"] and r["device"] and r["torch"]
        assert r["status"] == "ok" or r["status"].startswith("skipped"), r
        if r["status"] == "ok" and r["stage"] not in ("gpu_tests", "recipes", "generate"):
            assert r["rows"] > 0 and r["numbers"] and "could not summarize" not in r["numbers"], r
    assert "| stage | status |" in (tmp_path / "gpu_check.md").read_text()
    for suite in ("fused_linear_logprob", "train_step", "norm_rope_swiglu", "dpo_loss"):
        assert (tmp_path / f"{suite}.jsonl").stat().st_size > 0, suite
    assert results_state() == before  # bench/results untouched
