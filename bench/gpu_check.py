"""The one-command GPU check: the GPU tests and the GPU benchmarks, and one summary table.

    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out "$OUT"   # a lent device (an uninstalled copy): timeout_s 540
    python -m ie_engine.bench.gpu_check                          # an installed engine on your GPU: bench/results
    python -m ie_engine.bench.gpu_check --dry-run                # the same stages on CPU, tiny shapes
    python3 bench/gpu_check.py --out "$OUT" --only generate_7b   # a second short call (timeout_s 150)
    python -m ie_engine.bench.gpu_check --skip recipes generate

Each stage is its own subprocess with its own timeout; a stage that fails or times out is
reported in the table and the check goes on. PLAN below is the first call, in order of value,
each stage with its expected time on one H200 (on paper: README "GPU check" says how each was
sized) and a timeout above it. Timeouts add up to BUDGET_S, and BUDGET_S plus the check's own
start, two kill graces and packing fit DEVICE_TIMEOUT_S, the device call's timeout_s; 15 lent
minutes then leave ~3 for the machine's start and ~3 for a second short call (SECOND_CALL:
stages left out of the first, or a rerun of one that failed; tests/test_gpu_check.py checks
the arithmetic). Without CUDA, or with --dry-run, the same stages run on CPU with tiny shapes,
one thread, torch.compile disabled (TORCH_COMPILE_DISABLE=1: the calls stay, compile returns
the function), ~60 s on 2 idle cores.

Results, with --out DIR (what a lent machine's $OUT brings back: at most 8 files): every
benchmark's rows (bench/common.py's append_results, redirected by BENCH_RESULTS_DIR), one row
per stage in gpu_check.jsonl, the table in gpu_check.md and each stage's full output
(logs/<stage>.log) go to a staging folder, packed into DIR/gpu_check.tar.gz after EVERY stage
(a call killed at its limit still returns what ran), with gpu_check.md and gpu_check.jsonl
beside it: three files. Without --out: appended to bench/results (a dry run: nowhere). Rows are
stamped with date, git sha, device and torch/triton versions. The compact table is printed last.

Targets (benchmarks, not tests: a miss is reported, not an error; a baseline that cannot run
here is n/a): fused head fwd+bwd >= 60% of the measured bf16 matmul peak in model FLOPs and
extra memory <= 20% of eager's; llama2-1b SFT step MFU >= 45% on the recipes' path (FSDP2,
bf16 mixed; data-sheet bf16 peak, engine/log.py); DPO step >= 1.5x TRL's real tokens/s; small
kernels faster than torch.compile of their reference, or smaller.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Callable

import torch

if __package__ in (None, ""):  # run as bench/gpu_check.py, e.g. from an uninstalled copy on a GPU machine
    from source_tree import ensure_importable
    ensure_importable()

from ie_engine.bench import gpu_check_summary as summary  # noqa: E402
from ie_engine.bench.common import (  # noqa: E402
    DPO_VS_TRL_TARGET,
    MFU_TARGET,
    REPO_ROOT,
    RESULTS_DIR,
    print_table,
    run_metadata,
)

BUDGET_S = 480          # the first call's stage timeouts, all together (PLAN)
DEVICE_TIMEOUT_S = 540  # the device call's timeout_s: BUDGET_S + START_S + 2 kill graces + packing
START_S = 15            # the check's own start (import torch, CUDA) and its table
DEVICE_MINUTES_S = 900  # a lent machine's time for all calls together, its start included
MACHINE_START_S = 180   # a fresh machine's start, on the lease ("minutes")
SECOND_CALL_S = 150     # timeout_s of a second short call (SECOND_CALL)
DRY_TIMEOUT_S = 120     # per stage in a dry run (none should need more than ~25 s)
MIN_STAGE_S = 10        # a stage is not started with less budget left than this
KILL_GRACE_S = 10       # SIGTERM, then SIGKILL this much later
TAIL_LINES, TAIL_CHARS = 15, 240  # a failed stage's output shown (its whole log is in the archive)
ARCHIVE = "gpu_check.tar.gz"

# Modules the stages import and what their absence costs (the device image has none of the last five).
OPTIONAL = {
    "triton": "no GPU kernels: every kernel falls back to its PyTorch reference",
    "numpy": "nothing runs", "safetensors": "no checkpoints", "sentencepiece": "no tokenizer",
    "yaml": "no recipe configs", "pytest": "gpu_tests and recipes skipped",
    "transformers": "train_step's hf_padded and TRL cases n/a, export checks skip, generate fails",
    "trl": "train_step: trl_fused_padded n/a; trl_logits_padded uses selective_log_softmax written by definition",
    "flash_attn": "attention by FlexAttention (the default without it)",
    "vllm": "generate.backend=vllm unavailable (no stage uses it)",
    "rouge_score": "the on-demand IE content score unavailable (no stage uses it)",
    "nltk": "char BLEU's NLTK cross-check tests skip (no GPU test uses it)",
}


@dataclasses.dataclass
class Stage:
    name: str
    gpu_args: list[str]                 # after `python -m`
    dry_args: list[str]
    expected_s: int                     # on one H200, on paper (README "GPU check")
    timeout_s: int                      # on the GPU
    summarize: Callable[[list[dict], str, bool], tuple[str, bool | None]]
    """(the stage's new result rows, its output, on_gpu) -> (key numbers, target met: None = no target or n/a)."""
    target: str = "-"
    extra: bool = False                 # not in the first call: run only when named by --only


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
        return summary.verdict(self.target, self.target_met) if self.status == "ok" else ""


def build_stages(work: pathlib.Path) -> list[Stage]:
    """PLAN, in order of value (when the budget runs out, the last stages are the ones cut), then
    the extras a second call can name."""
    pytest = ["pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    kernel_tests = [*pytest, "tests/", "--ignore=tests/recipes"]
    step = ["ie_engine.bench.bench_train_step", "--rep", "1", "--work", str(work / "train_step")]
    step_dry = [*step, "--device", "cpu", "--preset", "tiny", "--cpu-peak", "inprocess"]
    gen = ["ie_engine.bench.bench_generate", "--device", "cuda", "--batch", "1", "64", "--rep", "3",
           "--cache-dir", str(work / "generate")]
    gen_dry = ["ie_engine.bench.bench_generate", "--device", "cpu", "--preset", "debug", "--batch", "2",
               "--new-tokens", "8", "--rep", "3", "--cache-dir", str(work / "generate")]
    step_target = f"SFT MFU (FSDP2 bf16 mixed)>={100 * MFU_TARGET:.0f}%, DPO>={DPO_VS_TRL_TARGET}x TRL tok/s"
    vs_compile = "faster or smaller than compile"
    return [
        Stage("fused_head",
              ["ie_engine.bench.bench_fused_linear_logprob", "--device", "cuda", "--n", "8192", "--h", "4096", "--v", "32000"],
              ["ie_engine.bench.bench_fused_linear_logprob", "--device", "cpu", "--n", "256", "--h", "64", "--v", "512",
               "--rep", "1"],
              45, 60, summary.summarize_fused_head,
              f">={summary.HEAD_PEAK_TARGET:.0f}% bf16 peak, <={100 * summary.HEAD_MEM_TARGET:.0f}% eager mem"),
        Stage("train_step", [*step, "--device", "cuda", "--preset", "llama2-1b"], step_dry,
              105, 125, summary.summarize_train_step, step_target),
        Stage("recipes", [*pytest, "tests/recipes"], [*pytest, "tests/recipes"], 100, 125, summary.summarize_pytest),
        Stage("gpu_tests", kernel_tests, kernel_tests, 65, 85, summary.summarize_pytest),
        Stage("generate", [*gen, "--preset", "llama2-1b", "--new-tokens", "64"], gen_dry, 30, 40,
              summary.summarize_generate),
        Stage("norm_rope_swiglu", ["ie_engine.bench.bench_norm_rope_swiglu", "--modes", "fwd+bwd"],
              ["ie_engine.bench.bench_norm_rope_swiglu", "--small", "--modes", "fwd+bwd"], 25, 30,
              summary.summarize_vs_compile("kernel", ("triton", "ref"), "mode"), vs_compile),
        Stage("dpo_loss", ["ie_engine.bench.bench_dpo_loss", "--device", "cuda", "--sizes", "65536", "--loss-types",
                           "sigmoid"],
              ["ie_engine.bench.bench_dpo_loss", "--device", "cpu", "--sizes", "256", "--loss-types", "sigmoid",
               "--threads", "1"],
              10, 15, summary.summarize_vs_compile("B", ("triton", "eager_ref"), "pass"), vs_compile),
        # A second call (SECOND_CALL); their dry runs are the stages above, at the same tiny shapes.
        Stage("generate_7b", [*gen, "--preset", "llama2-7b", "--new-tokens", "128"], gen_dry, 90, 120,
              summary.summarize_generate, extra=True),
        Stage("train_step_7b", [*step, "--device", "cuda", "--preset", "llama2-7b-4l"], step_dry, 100, 130,
              summary.summarize_train_step, step_target, extra=True),
        Stage("real_model", ["ie_engine.bench.bench_real_model", "--device", "cuda", "--examples", "12", "--pairs", "6"],
              [], 90, 120, summary.summarize_rows, extra=True),  # SmolLM2-135M vs TRL (needs runs/smollm2-135m)
    ]


SECOND_CALL = ("generate_7b",)  # what `--only` adds in a second call by default (README)


def missing_modules() -> list[str]:
    """What the stages import that this Python lacks (nothing is installed: the table's header
    names each with what it costs, and a stage that needs one says why in its log)."""
    return [m for m in OPTIONAL if importlib.util.find_spec(m) is None]


def unrunnable(dry: bool = False) -> dict[str, str]:
    """stage -> why it cannot run on this machine."""
    from ie_engine.bench import real_model
    out = {}
    if dry:
        out["real_model"] = "skipped (dry run: a 135M model takes minutes per case on CPU)"
    elif not real_model.is_prepared(real_model.DEFAULT_DIR) and real_model.missing_dependencies():
        out["real_model"] = f"skipped (no runs/smollm2-135m and {', '.join(real_model.missing_dependencies())} missing)"
    if importlib.util.find_spec("pytest") is None:
        out.update(gpu_tests="skipped (pytest is not installed)", recipes="skipped (pytest is not installed)")
    return out


# ----------------------------------------------------------------------------- running

def stage_env(results: pathlib.Path, dry: bool) -> dict:
    env = {**os.environ, "BENCH_RESULTS_DIR": str(results), "TRITON_INTERPRET": "0",
           "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "ENGINE_NO_BAR": "1", "PYTHONUNBUFFERED": "1"}
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
    for path in jsonl_sizes(results):
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
    shown = "python -m " + " ".join(args)
    print(f"[gpu_check] {stage.name}: {shown}  (timeout {timeout_s} s)", flush=True)
    log = logs / f"{stage.name}.log"
    before = jsonl_sizes(results)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write(f"$ {shown}\n")
        f.flush()
        # its own process group, so a timeout also ends what the stage started (torchrun workers)
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
            status = "ok" if rc == 0 else f"FAIL (rc {rc})"  # pytest's 5 (nothing collected) is a failure
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
    if status != "ok":
        tail = "\n".join(line[:TAIL_CHARS] for line in output.splitlines()[-TAIL_LINES:])
        print(f"[gpu_check] {stage.name} {status} after {seconds:.0f} s; last lines of its log:\n{tail}", flush=True)
    else:
        print(f"[gpu_check] {stage.name} ok in {seconds:.0f} s: {numbers[:2 * TAIL_CHARS]}", flush=True)
    return Outcome(stage.name, status, seconds, numbers, stage.target if not dry else "-",
                   met if status == "ok" else None, shown, rc, timeout_s, len(rows))


def header(meta: dict, mode: str, total_s: float) -> str:
    head = (f"gpu_check ({mode}) {meta['device']}  torch {meta['torch']}  triton {meta['triton']}  "
            f"git {meta['git_sha']}  {meta['date']}  total {total_s:.0f} s")
    if meta["missing_modules"]:
        head += f"  missing: {', '.join(meta['missing_modules'])}"
    return head


def write_results(outcomes: list[Outcome], results: pathlib.Path, meta: dict, mode: str, total_s: float,
                  append: bool) -> None:
    """gpu_check.jsonl (a row per stage) and gpu_check.md (the table): appended to a results
    directory that keeps history (bench/results), rewritten in a run's own staging folder."""
    lines = [json.dumps({**meta, "suite": "gpu_check", "mode": mode, "total_s": total_s,
                         **dataclasses.asdict(o), "verdict": o.verdict()}) for o in outcomes]
    with open(results / "gpu_check.jsonl", "a" if append else "w") as f:
        f.write("".join(line + "\n" for line in lines))
    with open(results / "gpu_check.md", "a" if append else "w") as f:
        f.write(summary.markdown(header(meta, mode, total_s), outcomes))
        if not append and meta["missing_modules"]:
            f.write("\n" + "".join(f"- {m} missing: {OPTIONAL[m]}\n" for m in meta["missing_modules"]))


def pack(staging: pathlib.Path, out: pathlib.Path) -> None:
    """staging -> out/gpu_check.tar.gz (replaced atomically), plus out/gpu_check.{md,jsonl}."""
    tmp = out / f".{ARCHIVE}.part"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(staging, arcname="gpu_check")
    os.replace(tmp, out / ARCHIVE)
    for name in ("gpu_check.md", "gpu_check.jsonl"):
        if (staging / name).exists():
            shutil.copyfile(staging / name, out / name)


def select(stages: list[Stage], only: list[str], skip: list[str]) -> list[Stage]:
    if only:
        return [s for s in stages if s.name in only]
    return [s for s in stages if not s.extra and s.name not in skip]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=pathlib.Path, help=f"results: {ARCHIVE}, gpu_check.md and gpu_check.jsonl "
                                                     "(default: appended to bench/results; a dry run: nowhere)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (the default without CUDA)")
    names = [s.name for s in build_stages(pathlib.Path("."))]
    ap.add_argument("--skip", nargs="+", default=[], choices=names, metavar="STAGE", help=f"from {names}")
    ap.add_argument("--only", nargs="+", default=[], choices=names, metavar="STAGE",
                    help=f"run just these (a second call: {' '.join(SECOND_CALL)})")
    ap.add_argument("--budget", type=int, default=BUDGET_S, help="seconds for all stages together (GPU)")
    args = ap.parse_args(argv)
    # A call stopped at its limit (timeout's SIGTERM) must end the running stage too: stages run
    # in their own sessions, which a lent machine lets run on after the call.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    dry = args.dry_run or not torch.cuda.is_available()
    if dry and not args.dry_run:
        print("[gpu_check] no CUDA device: dry run (tiny shapes on CPU)", flush=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="gpu_check_"))
    staged = args.out is not None or dry
    results = tmp / "results" if staged else RESULTS_DIR
    logs = results / "logs" if staged else results / "gpu_check_logs"
    logs.mkdir(parents=True, exist_ok=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    env = stage_env(results, dry)
    meta = {**run_metadata(), "missing_modules": missing_modules()}
    mode = "dry-run" if dry else "gpu"
    print(f"[gpu_check] {mode} on {meta['device']}, git {meta['git_sha']}; results -> {args.out or results}", flush=True)
    for m in meta["missing_modules"]:
        print(f"[gpu_check] missing {m}: {OPTIONAL[m]}", flush=True)

    t_start, outcomes = time.perf_counter(), []
    skipped = unrunnable(dry)
    try:
        for stage in select(build_stages(tmp), args.only, args.skip):
            if stage.name in skipped:
                outcomes.append(Outcome(stage.name, skipped[stage.name]))
            elif dry:
                outcomes.append(run_stage(stage, dry, DRY_TIMEOUT_S, results, logs, env))
            else:
                left = args.budget - (time.perf_counter() - t_start)
                if left < MIN_STAGE_S:
                    outcomes.append(Outcome(stage.name, f"skipped (budget: {left:.0f} s left)"))
                else:
                    outcomes.append(run_stage(stage, dry, int(min(stage.timeout_s, left)), results, logs, env))
            if args.out is not None:  # after every stage: a call killed at its limit still returns this
                write_results(outcomes, results, meta, mode, time.perf_counter() - t_start, append=False)
                pack(results, args.out)
        total = time.perf_counter() - t_start
        write_results(outcomes, results, meta, mode, total, append=not staged)
        if args.out is not None:
            pack(results, args.out)
            print(f"# wrote {args.out / ARCHIVE} (every row and log), gpu_check.md, gpu_check.jsonl", flush=True)
        elif not dry:
            print(f"# appended to {results / 'gpu_check.jsonl'} and gpu_check.md; logs in {logs}", flush=True)
        else:
            print("# dry run without --out: nothing was kept", flush=True)
        print("\n# " + header(meta, mode, total))
        print_table(summary.table_rows(outcomes, compact=True))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(o.status == "ok" or o.status.startswith("skipped") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
