"""The one-command GPU check: the GPU tests and the GPU benchmarks, and one summary table.

    python -m ie_engine.bench.gpu_check          # one GPU (H200: at most 8 minutes in all)
    python3 bench/gpu_check.py --out "$OUT"      # the same from an uninstalled source tree (bench/source_tree.py)
    python -m ie_engine.bench.gpu_check --out DIR          # everything goes to DIR instead of bench/results
    python -m ie_engine.bench.gpu_check --out "$OUT"       # on a lent device machine: the results come back
    python -m ie_engine.bench.gpu_check --dry-run          # tiny shapes on CPU (the default without CUDA)
    python -m ie_engine.bench.gpu_check --skip recipes generate

Each stage is its own subprocess with its own timeout; a stage that fails or times out is
reported in the table and the check goes on. The stages together are held to --budget seconds
(default 450, so that with start-up and the table the check ends within 8 minutes): they run in
order of importance, and a late one gets only what is left, or is skipped.

  stage             GPU command (python -m ...)                                         timeout
  gpu_tests         pytest -m gpu tests/ --ignore=tests/recipes   (kernels on CUDA, bf16)    90 s
  fused_head        bench.bench_fused_linear_logprob --device cuda --n 8192 --h 4096 --v 32000
                    (eager, torch.compile and fused, fwd / bwd / fwd+bwd)                    90 s
  train_step        bench.bench_train_step --device cuda --preset llama2-1b --rep 1
                    (SFT packed flex / padded / HF; DPO ours / TRL logits / TRL fused)      150 s
  recipes           pytest -m gpu tests/recipes   (SFT flex + sdpa, DPO, 2 GPUs, determinism) 180 s
  norm_rope_swiglu  bench.bench_norm_rope_swiglu   (LLaMA-7B shapes, bf16, vs torch.compile)  75 s
  dpo_loss          bench.bench_dpo_loss --device cuda --loss-types sigmoid   (vs compile)    60 s
  generate          bench.bench_generate --device cuda (llama2-1b, 7b; batch 1, 64)          120 s
  real_model        bench.bench_real_model --device cuda (SmolLM2-135M, ADELIE batches, bf16;
                    ours vs TRL SFTTrainer / DPO; needs the real extra or a prepared
                    runs/smollm2-135m; skipped in the dry run: minutes on CPU)              120 s

The dry run runs the same stages on CPU: the same pytest selections (every GPU test skips), each
benchmark with its smallest CPU arguments (bench_train_step: preset tiny, peaks in-process),
one thread, torch.compile disabled (TORCH_COMPILE_DISABLE=1: the calls stay, compile returns
the function), ~40 s on 2 idle cores.

Targets (benchmarks, not tests: a miss is reported, not an error): fused head fwd+bwd >= 60% of
the measured bf16 matmul peak in model FLOPs (2NHV forward + 4NHV backward; the fused backward
also recomputes the logits, shown as 'executed') and extra memory <= 20% of eager's; llama2-1b
SFT step MFU >= 45% (data-sheet bf16 peak, engine/log.py); DPO step >= 1.5x TRL's real tokens/s
(both TRL baselines); small kernels faster than torch.compile of their reference, or smaller.

Results: every benchmark appends its own rows (bench/common.py's append_results, redirected by
BENCH_RESULTS_DIR), this check appends one row per stage to gpu_check.jsonl and its table to
gpu_check.md, all stamped with date, git sha, device and torch/triton versions, and each
stage's full output goes to gpu_check_logs/<stage>.log. The default directory is bench/results;
a dry run writes nowhere unless --out is given (a temporary directory, removed afterwards).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

import torch

if __package__ in (None, ""):  # run as bench/gpu_check.py, e.g. from an uninstalled copy on a GPU machine
    from source_tree import ensure_importable
    ensure_importable()

from ie_engine.bench.common import REPO_ROOT, RESULTS_DIR, print_table, run_metadata

BUDGET_S = 450          # all stage timeouts together; with start-up, a kill grace and the table: < 8 min
DRY_TIMEOUT_S = 120     # per stage in a dry run (none should need more than ~25 s)
MIN_STAGE_S = 20        # a stage is not started with less budget left than this
KILL_GRACE_S = 10       # SIGTERM, then SIGKILL this much later

MFU_TARGET, DPO_VS_TRL_TARGET, HEAD_PEAK_TARGET, HEAD_MEM_TARGET = 0.45, 1.5, 60.0, 0.20


@dataclasses.dataclass
class Stage:
    name: str
    gpu_args: list[str]                 # after `python -m`
    dry_args: list[str]
    timeout_s: int                      # on the GPU
    summarize: Callable[[list[dict], str, bool], tuple[str, bool | None]]
    """(the stage's new result rows, its output, on_gpu) -> (key numbers, target met: None = no target)."""
    target: str = "-"
    note: str = ""                      # what this machine leaves out, shown with the numbers


@dataclasses.dataclass
class Outcome:
    stage: str
    status: str                         # ok, FAIL (rc N), TIMEOUT (N s), skipped (why)
    seconds: float = 0.0
    numbers: str = ""
    target: str = "-"
    target_met: bool | None = None
    command: str = ""
    rc: int | None = None
    timeout_s: int | None = None
    rows: int = 0

    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: ""}[self.target_met]


# ----------------------------------------------------------------------------- summaries

def _pick(rows: list[dict], **want) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def _ratio(a, b) -> float | None:
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def summarize_pytest(rows: list[dict], output: str, on_gpu: bool) -> tuple[str, bool | None]:
    """pytest's last line, e.g. '12 passed, 3 skipped in 40.1s' -> '12 passed, 3 skipped'."""
    lines = [l for l in output.splitlines() if re.search(r"\b(passed|failed|skipped|error|deselected|no tests)\b", l)]
    if not lines:
        return "no pytest summary line", None
    counts = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", lines[-1])
    text = ", ".join(f"{n} {what}" for n, what in counts) or lines[-1].strip("= ")
    failed = [t.split("/")[-1] for t in re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)]
    if failed:
        text += "; " + ", ".join(failed[:4]) + (f" and {len(failed) - 4} more" if len(failed) > 4 else "")
    return text, None


def summarize_fused_head(rows: list[dict], output: str, on_gpu: bool) -> tuple[str, bool | None]:
    r = _pick(rows, case="fused_logprob", mode="fwd+bwd")
    if r is None:
        return "no fused_logprob fwd+bwd row", None
    ce = _pick(rows, case="fused_ce", mode="fwd+bwd") or {}
    mem = r.get("mem_vs_eager")
    shape = f"N={r.get('N')} H={r.get('H')} V={r.get('V')} {r.get('dtype')}"
    mem_s = f"extra mem {100 * mem:.1f}% of eager" if mem is not None else "no eager row"
    if ce.get("mem_vs_eager") is not None:
        mem_s += f" (CE {100 * ce['mem_vs_eager']:.1f}%)"
    if not on_gpu:
        return f"{shape} fwd+bwd {r['ms']:.2f} ms (CPU reference path), {mem_s}", None
    pct = r.get("pct_peak_model")
    text = (f"{shape} fwd+bwd {r['ms']:.2f} ms, {r.get('model_TFLOPs', 0):.0f} TFLOP/s = {pct:.1f}% of bf16 peak "
            f"({r.get('pct_peak_executed', 0):.1f}% executed; peak {r.get('peak_bf16_TFLOPs', 0):.0f}), {mem_s}")
    if r.get("time_vs_eager") is not None:
        text += f", {1 / r['time_vs_eager']:.2f}x eager speed"
    met = pct is not None and mem is not None and pct >= HEAD_PEAK_TARGET and mem <= HEAD_MEM_TARGET
    return text, met


def summarize_train_step(rows: list[dict], output: str, on_gpu: bool) -> tuple[str, bool | None]:
    s = _pick(rows, task="summary")
    sft = _pick(rows, case="ours_fused_packed")
    if s is None or sft is None:
        return "no train_step summary / ours_fused_packed row", None
    parts = [f"{s.get('preset')}: SFT {sft['tokens_per_s']:.0f} tok/s, MFU {100 * sft['mfu']:.1f}%, "
             f"step peak +{sft['extra_peak_MiB'] / 1024:.2f} GiB over {sft['state_MiB'] / 1024:.2f} GiB weights+AdamW"]
    packed = s.get("sft_packed_vs_padded_tok_s")
    if packed is not None:
        parts.append(f"packed/padded {packed:.2f}x tok/s")
    dpo = _pick(rows, case="ours_dpo_packed")
    trl = {k: s.get(f"dpo_ours_vs_trl_{k}_tok_s") for k in ("logits", "fused")}
    trl = {k: v for k, v in trl.items() if v is not None}
    if dpo is not None:
        parts.append(f"DPO {dpo['tokens_per_s']:.0f} tok/s" +
                     ("; vs TRL " + ", ".join(f"{v:.2f}x ({k})" for k, v in trl.items()) if trl else "; no TRL case"))
    if s.get("agree") is False:
        parts.append("CASES DISAGREE on loss/grad norm")
    if not on_gpu:
        return "; ".join(parts), None
    met = sft["mfu"] >= MFU_TARGET and bool(trl) and min(trl.values()) >= DPO_VS_TRL_TARGET
    return "; ".join(parts), met


def summarize_vs_compile(kernel_key: str, fast_impls: tuple[str, ...], mode_key: str):
    """Kernels vs torch.compile of their reference at fwd+bwd: compiled ms / our ms per shape
    (> 1: faster than compile), and the peak-memory ratio. On CPU there is no Triton, so the
    eager reference stands in (the numbers then describe compile, not our kernels)."""

    def summarize(rows: list[dict], output: str, on_gpu: bool) -> tuple[str, bool | None]:
        rows = [r for r in rows if r.get(mode_key) == "fwd+bwd"]
        impl = next((i for i in fast_impls if any(r.get("impl") == i for r in rows)), None)
        if impl is None:
            return "no fwd+bwd rows", None
        parts, met = [], True
        for r in (r for r in rows if r.get("impl") == impl):
            label = r.get(kernel_key) if kernel_key != "B" else f"B={r['B']}"
            if "loss_type" in r:
                label = f"{r['loss_type']} {label}"
            c = next((c for c in rows if c.get("impl", "").startswith("compiled") and
                      all(c.get(k) == r.get(k) for k in (kernel_key, "loss_type", "shape", "B") if k in r)), None)
            if c is None:
                continue
            speed = _ratio(c["ms"], r["ms"])
            mem_key = "peak_MiB" if "peak_MiB" in r else "peak_mem_MiB"
            mem = _ratio(r.get(mem_key), c.get(mem_key))
            parts.append(f"{label} {speed:.2f}x" + (f"/mem {mem:.2f}x" if mem is not None else ""))
            met = met and (speed >= 1.0 or (mem is not None and mem <= 1.0))
        text = f"{impl} vs torch.compile (fwd+bwd speed/mem): " + ", ".join(parts)
        return text, (met if on_gpu and parts else None)

    return summarize


def summarize_generic(rows: list[dict], output: str, on_gpu: bool) -> tuple[str, bool | None]:
    keys = [k for r in rows for k in r if re.search(r"tok(ens)?_(per_)?s", k)]
    if not rows:
        return "no result rows", None
    shown = [f"{r.get('case', r.get('impl', ''))} {k}={r[k]:.0f}" for r in rows for k in keys
             if isinstance(r.get(k), (int, float))]
    return f"{len(rows)} rows" + ("; " + ", ".join(dict.fromkeys(shown)) if shown else ""), None


# ----------------------------------------------------------------------------- stages

def build_stages(work: pathlib.Path) -> list[Stage]:
    """In order of importance: when the budget runs out, the last stages are the ones cut."""
    pytest = ["pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    kernel_tests = [*pytest, "tests/", "--ignore=tests/recipes"]
    step_args, step_note = ["--rep", "1", "--work", str(work / "train_step")], ""
    have = lambda mod: importlib.util.find_spec(mod) is not None  # noqa: E731
    if not (have("transformers") and have("trl")):  # the baselines; ours alone still gives MFU
        step_args += ["--only", "ours_"]
        step_note = "transformers/trl not installed: ours only, no HF/TRL baselines"
    return [
        Stage("gpu_tests", kernel_tests, kernel_tests, 90, summarize_pytest),
        Stage("fused_head",
              ["ie_engine.bench.bench_fused_linear_logprob", "--device", "cuda", "--n", "8192", "--h", "4096", "--v", "32000"],
              ["ie_engine.bench.bench_fused_linear_logprob", "--device", "cpu", "--n", "256", "--h", "64", "--v", "512",
               "--rep", "1"],
              90, summarize_fused_head,
              f">={HEAD_PEAK_TARGET:.0f}% bf16 peak, <={100 * HEAD_MEM_TARGET:.0f}% eager mem"),
        Stage("train_step", ["ie_engine.bench.bench_train_step", "--device", "cuda", "--preset", "llama2-1b", *step_args],
              ["ie_engine.bench.bench_train_step", "--device", "cpu", "--preset", "tiny", *step_args, "--cpu-peak", "inprocess"],
              150, summarize_train_step, f"SFT MFU>={100 * MFU_TARGET:.0f}%, DPO>={DPO_VS_TRL_TARGET}x TRL tok/s",
              step_note),
        Stage("recipes", [*pytest, "tests/recipes"], [*pytest, "tests/recipes"], 180, summarize_pytest),
        Stage("norm_rope_swiglu", ["ie_engine.bench.bench_norm_rope_swiglu"], ["ie_engine.bench.bench_norm_rope_swiglu", "--small"],
              75, summarize_vs_compile("kernel", ("triton", "ref"), "mode"), "faster or smaller than compile"),
        Stage("dpo_loss", ["ie_engine.bench.bench_dpo_loss", "--device", "cuda", "--loss-types", "sigmoid"],
              ["ie_engine.bench.bench_dpo_loss", "--device", "cpu", "--sizes", "256", "--loss-types", "sigmoid",
               "--threads", "1"],
              60, summarize_vs_compile("B", ("triton", "eager_ref"), "pass"), "faster or smaller than compile"),
        Stage("generate", ["ie_engine.bench.bench_generate", "--device", "cuda", "--preset", "llama2-1b", "llama2-7b",
                           "--batch", "1", "64", "--rep", "1"],
              ["ie_engine.bench.bench_generate", "--device", "cpu", "--preset", "debug", "--batch", "2", "--new-tokens", "8",
               "--rep", "1"], 120, summarize_generic),
        Stage("real_model", ["ie_engine.bench.bench_real_model", "--device", "cuda", "--examples", "12", "--pairs", "6"],
              [], 120, summarize_generic),
    ]


def missing_modules() -> list[str]:
    """What the stages import that this Python lacks (nothing is installed: a failed stage then
    says why in its log, and the table's header says it here)."""
    wanted = ("triton", "numpy", "safetensors", "sentencepiece", "yaml", "pytest", "transformers", "trl")
    return [m for m in wanted if importlib.util.find_spec(m) is None]


def unrunnable(dry: bool = False) -> dict[str, str]:
    """stage -> why it cannot run on this machine."""
    from ie_engine.bench import real_model
    out = {}
    if dry:
        out["real_model"] = "skipped (dry run: a 135M model takes minutes per case on CPU)"
    elif not real_model.is_prepared(real_model.DEFAULT_DIR) and real_model.missing_dependencies():
        out["real_model"] = f"skipped (no runs/smollm2-135m and {', '.join(real_model.missing_dependencies())} missing)"
    if not (REPO_ROOT / "bench" / "bench_generate.py").exists():
        out["generate"] = "skipped (bench/bench_generate.py does not exist yet)"
    if importlib.util.find_spec("pytest") is None:
        out["gpu_tests"] = out["recipes"] = "skipped (pytest is not installed)"
    return out


# ----------------------------------------------------------------------------- running

def stage_env(results: pathlib.Path, dry: bool) -> dict:
    env = {**os.environ, "BENCH_RESULTS_DIR": str(results), "TRITON_INTERPRET": "0",
           "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "ENGINE_NO_BAR": "1"}
    if dry:
        # Shared CPU cores: one thread (a descheduled OpenMP thread stalls every op); and no
        # torch.compile (its C++ build alone takes ~30 s per benchmark on 2 cores): the calls
        # stay, compile returns the function itself. CUDA hidden: on a GPU machine a dry run
        # stays the CPU run.
        env.update(OMP_NUM_THREADS="1", TORCH_COMPILE_DISABLE="1", CUDA_VISIBLE_DEVICES="")
    return env


def jsonl_sizes(results: pathlib.Path) -> dict[pathlib.Path, int]:
    return {p: p.stat().st_size for p in results.glob("*.jsonl") if p.name != "gpu_check.jsonl"}


def new_rows(results: pathlib.Path, before: dict[pathlib.Path, int]) -> list[dict]:
    """The rows the stage appended to any results file."""
    rows = []
    for path, size in jsonl_sizes(results).items():
        with open(path, "rb") as f:
            f.seek(before.get(path, 0))
            for line in f.read().decode(errors="replace").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def end_group(proc: subprocess.Popen) -> None:
    """SIGTERM the stage's process group (torchrun passes it on to its workers), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def run_stage(stage: Stage, dry: bool, timeout_s: int, results: pathlib.Path, logs: pathlib.Path,
              env: dict) -> Outcome:
    args = stage.dry_args if dry else stage.gpu_args
    cmd = [sys.executable, "-m", *args]
    shown = "python -m " + " ".join(args)
    print(f"[gpu_check] {stage.name}: {shown}  (timeout {timeout_s} s)", flush=True)
    log = logs / f"{stage.name}.log"
    before = jsonl_sizes(results)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write(f"$ {shown}\n")
        f.flush()
        # its own process group, so a timeout also ends what the stage started (torchrun workers)
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
            status = "ok" if rc == 0 or (rc == 5 and args[0] == "pytest") else f"FAIL (rc {rc})"
        except subprocess.TimeoutExpired:
            rc, status = None, f"TIMEOUT ({timeout_s} s)"
            end_group(proc)
        except BaseException:  # Ctrl-C: the stage's own session would outlive us
            end_group(proc)
            raise
    seconds = time.perf_counter() - t0
    output = log.read_text(errors="replace")
    rows = new_rows(results, before)
    try:
        numbers, met = stage.summarize(rows, output, not dry)
    except Exception as err:  # a bench changed its row format: say so, keep the check going
        numbers, met = f"could not summarize: {type(err).__name__}: {err}", None
    if stage.note:
        numbers = f"{numbers} [{stage.note}]"
    if status != "ok":
        tail = "\n".join(output.splitlines()[-40:])
        print(f"[gpu_check] {stage.name} {status} after {seconds:.0f} s; last lines of {log}:\n{tail}", flush=True)
    else:
        print(f"[gpu_check] {stage.name} ok in {seconds:.0f} s: {numbers}", flush=True)
    return Outcome(stage.name, status, seconds, numbers, stage.target if not dry else "-",
                   met if status == "ok" else None, shown, rc, timeout_s, len(rows))


def write_summary(outcomes: list[Outcome], results: pathlib.Path, meta: dict, mode: str, total_s: float) -> None:
    table = [{"stage": o.stage, "status": o.status, "s": f"{o.seconds:.0f}", "key numbers": o.numbers,
              "target": o.target, "verdict": o.verdict()} for o in outcomes]
    head = (f"gpu_check ({mode}) {meta['device']}  torch {meta['torch']}  triton {meta['triton']}  "
            f"git {meta['git_sha']}  {meta['date']}  total {total_s:.0f} s")
    if meta["missing_modules"]:
        head += f"  missing: {', '.join(meta['missing_modules'])}"
    print("\n# " + head)
    print_table(table)
    with open(results / "gpu_check.jsonl", "a") as f:
        for o in outcomes:
            f.write(json.dumps({**meta, "suite": "gpu_check", "mode": mode, "total_s": total_s,
                                **dataclasses.asdict(o), "verdict": o.verdict()}) + "\n")
    with open(results / "gpu_check.md", "a") as f:
        f.write(f"\n## {head}\n\n| stage | status | s | key numbers | target | verdict |\n|---|---|---|---|---|---|\n")
        for r in table:
            f.write("| " + " | ".join(str(v).replace("|", "/") for v in r.values()) + " |\n")
    print(f"# wrote {results / 'gpu_check.jsonl'} and {results / 'gpu_check.md'}; logs in {results / 'gpu_check_logs'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=pathlib.Path, help="results directory (default: bench/results; "
                                                     "a dry run without --out writes nowhere)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (the default without CUDA)")
    names = [s.name for s in build_stages(pathlib.Path("."))]
    ap.add_argument("--skip", nargs="+", default=[], choices=names, metavar="STAGE", help=f"from {names}")
    ap.add_argument("--budget", type=int, default=BUDGET_S, help="seconds for all stages together (GPU)")
    args = ap.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    if dry and not args.dry_run:
        print("[gpu_check] no CUDA device: dry run (tiny shapes on CPU)", flush=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="gpu_check_"))
    results = args.out or (tmp / "results" if dry else RESULTS_DIR)
    logs = results / "gpu_check_logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = stage_env(results, dry)
    meta = {**run_metadata(), "missing_modules": missing_modules()}
    mode = "dry-run" if dry else "gpu"
    print(f"[gpu_check] {mode} on {meta['device']}, git {meta['git_sha']}; results -> {results}; "
          f"missing modules: {', '.join(meta['missing_modules']) or 'none'}", flush=True)

    t_start, outcomes = time.perf_counter(), []
    skipped = unrunnable(dry)
    try:
        for stage in build_stages(tmp):
            if stage.name in args.skip:
                outcomes.append(Outcome(stage.name, "skipped (--skip)"))
                continue
            if stage.name in skipped:
                outcomes.append(Outcome(stage.name, skipped[stage.name]))
                print(f"[gpu_check] {stage.name}: {skipped[stage.name]}", flush=True)
                continue
            if dry:
                timeout = DRY_TIMEOUT_S
            else:
                left = args.budget - (time.perf_counter() - t_start)
                if left < MIN_STAGE_S:
                    outcomes.append(Outcome(stage.name, f"skipped (budget: {left:.0f} s left)"))
                    continue
                timeout = int(min(stage.timeout_s, left))
            outcomes.append(run_stage(stage, dry, timeout, results, logs, env))
        total = time.perf_counter() - t_start
        write_summary(outcomes, results, meta, mode, total)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if dry and not args.out:
        print("# dry run without --out: nothing was kept", flush=True)
    return 0 if all(o.status == "ok" or o.status.startswith("skipped") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
