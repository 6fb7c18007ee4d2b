"""The GPU check as a lent H200 will run it, proven on CPU (issue 20):

- its plan fits: stage timeouts in order of value add up to the budget, the budget and the
  check's own overhead to the device call's timeout_s, and that call, the machine's start and a
  second short call to the 15 lent minutes; the README gives that exact command;
- with the device's package set (no rouge_score, nltk, trl, flash_attn, vllm; the engine not
  installed, imported from an uninstalled copy through bench/source_tree.py) every GPU test
  collects, and the dry run (`python3 bench/gpu_check.py --dry-run --out DIR`, every stage's
  code path on CPU at tiny shapes) exits 0, with the missing packages named, a baseline that
  cannot run shown as n/a, and everything in one archive plus the table (three files);
- a baseline that could not run is n/a in the verdict, never a miss.
"""
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from ie_engine.bench import gpu_check, gpu_check_summary
from ie_engine.bench.common import MFU_TARGET

from device_image import HIDDEN, device_env

REPO = Path(__file__).resolve().parents[1]
VALUE_ORDER = ["fused_head", "train_step", "recipes", "gpu_tests", "generate", "norm_rope_swiglu", "dpo_loss"]


def results_state() -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (REPO / "bench" / "results").glob("*")}


def test_plan_fits_the_budget_in_order_of_value(tmp_path):
    stages = gpu_check.build_stages(tmp_path)
    first = [s for s in stages if not s.extra]
    assert [s.name for s in first] == VALUE_ORDER
    assert all(s.expected_s < s.timeout_s for s in stages)
    assert sum(s.timeout_s for s in first) <= gpu_check.BUDGET_S
    overhead = gpu_check.START_S + 2 * gpu_check.KILL_GRACE_S + 5  # start, two killed stages, packing
    assert gpu_check.BUDGET_S + overhead <= gpu_check.DEVICE_TIMEOUT_S <= 600  # the device's per-call limit
    second = [s for s in stages if s.name in gpu_check.SECOND_CALL]
    assert second and all(s.extra for s in second)
    assert sum(s.timeout_s for s in second) + gpu_check.START_S <= gpu_check.SECOND_CALL_S
    assert (gpu_check.MACHINE_START_S + gpu_check.DEVICE_TIMEOUT_S + gpu_check.SECOND_CALL_S
            <= gpu_check.DEVICE_MINUTES_S)


def test_readme_gives_the_device_command_its_timeout_and_the_plan(tmp_path):
    text = (REPO / "README.md").read_text()
    table = re.findall(r"^\| (\w+) \| .* \| (\d+) s \| (\d+) s \|$", text, flags=re.M)
    plan = [(s.name, str(s.expected_s), str(s.timeout_s)) for s in gpu_check.build_stages(tmp_path) if not s.extra]
    assert table == plan
    assert 'PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out "$OUT"' in text
    assert f"timeout_s {gpu_check.DEVICE_TIMEOUT_S}" in text
    assert f"{100 * MFU_TARGET:.0f}%" in text and "50% MFU" not in text
    for stage in gpu_check.SECOND_CALL:
        assert f"--only {stage}" in text


def test_gpu_tests_collect_on_the_device_image(tmp_path):
    """One collection error would end the GPU test session: every module must import without the
    optional packages (issue 20, finding 1), from the uninstalled tree as the check runs it."""
    code = ("import sys; sys.path.insert(0, 'bench'); from source_tree import ensure_importable; "
            "print('engine from', ensure_importable()); import pytest; "
            "sys.exit(pytest.main(['-m', 'gpu', '--collect-only', '-q', '-p', 'no:cacheprovider', 'tests/']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=device_env(tmp_path / "image"),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "source_tree" in out.splitlines()[0]  # not the installed engine
    assert "error" not in out.splitlines()[-1] and int(out.split(" tests collected")[0].split()[-1].split("/")[0]) > 100


def test_dry_run_on_the_device_image(tmp_path):
    stages = [s.name for s in gpu_check.build_stages(tmp_path) if not s.extra]
    before = results_state()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--out", str(out)], cwd=REPO,
                          env=device_env(tmp_path / "image"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]

    table = proc.stdout[proc.stdout.index("# gpu_check (dry-run)"):]  # printed last
    head, columns, *lines = table.splitlines()
    assert all(m in head for m in HIDDEN)  # the missing packages are named
    assert columns.split()[:3] == ["stage", "status", "s"]
    assert [line.split()[0] for line in lines] == stages

    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.jsonl", "gpu_check.md", gpu_check.ARCHIVE]
    rows = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == stages
    for r in rows:
        assert r["mode"] == "dry-run" and r["git_sha"] and r["device"] and r["torch"]
        assert r["status"] == "ok", r
        if r["stage"] not in ("gpu_tests", "recipes"):
            assert r["rows"] > 0 and r["numbers"] and "could not summarize" not in r["numbers"], r
        else:
            assert "skipped" in r["numbers"] and "error" not in r["numbers"], r  # collected, then skipped
    step = next(r for r in rows if r["stage"] == "train_step")
    assert "FSDP2" in step["numbers"].upper() and "n/a (fused: trl not installed)" in step["numbers"]
    assert "(logits)" in step["numbers"]  # TRL's logits path ran without trl (written by definition)
    assert "| stage | status |" in (out / "gpu_check.md").read_text()

    with tarfile.open(out / gpu_check.ARCHIVE) as tar:
        names = set(tar.getnames())
    for suite in ("fused_linear_logprob", "train_step", "norm_rope_swiglu", "dpo_loss", "generate", "gpu_check"):
        assert f"gpu_check/{suite}.jsonl" in names, suite
    assert {f"gpu_check/logs/{s}.log" for s in stages} <= names
    assert results_state() == before  # bench/results untouched


def test_a_baseline_that_cannot_run_is_na_not_a_miss():
    def rows(fsdp_mfu, trl_logits):
        return [{"case": "ours_fused_packed", "tokens_per_s": 1e4, "mfu": 0.5, "precision": "pure bf16",
                 "extra_peak_MiB": 1024, "state_MiB": 4096},
                {"case": "ours_fsdp_packed", "mfu": fsdp_mfu, "precision": "fsdp2 bf16 mixed"},
                {"case": "ours_dpo_packed", "tokens_per_s": 9e3},
                {"task": "summary", "preset": "llama2-1b", "agree": True, "dpo_ours_vs_trl_logits_tok_s": trl_logits,
                 "not_run": {"trl_fused_padded": "trl not installed"}}]

    text, met = gpu_check_summary.summarize_train_step(rows(0.46, 2.0), "", on_gpu=True)
    assert met is True and "n/a (fused: trl not installed)" in text and "46.0% (fsdp2 bf16 mixed)" in text
    assert gpu_check_summary.summarize_train_step(rows(0.40, 2.0), "", on_gpu=True)[1] is False  # the recipes' MFU
    assert gpu_check_summary.summarize_train_step(rows(0.46, 1.2), "", on_gpu=True)[1] is False
    assert gpu_check_summary.verdict("a target", None) == "n/a"
