"""Shared benchmark helpers: timing, peak memory, measured hardware peaks, and the results log.

Every kernel benchmark reports fractions of the hardware, not only seconds, so this file also
measures the machine's own peaks once per process (bf16 matmul TFLOP/s, copy GB/s) instead of
trusting datasheet numbers. Results go to bench/results/<suite>.jsonl, one JSON object per row,
each stamped with the UTC date, git sha, device name and torch/triton versions;
BENCH_RESULTS_DIR=DIR sends them to DIR instead (bench.gpu_check's --out and its dry run).

CPU peak memory (`measure_peak_cpu`): CPU tensors have no `torch.cuda.max_memory_allocated`, so
we use the kernel's own high-water mark of the process's resident set. Writing "5" to
/proc/self/clear_refs (Linux >= 4.0) resets VmHWM to the current RSS; after running fn, VmHWM
minus the RSS before is the extra peak, exact to the page and with no sampling gaps. Large
tensors come from mmap and go back to the OS on free, so RSS tracks live tensors; we call
glibc's malloc_trim(0) first so memory freed earlier but kept by malloc cannot hide an
allocation, and fix glibc's mmap threshold at 1 MiB (by default it grows to 32 MiB after
frees, and heap memory below it is reused silently). Where clear_refs is not writable we fall
back to sampling VmRSS every 1 ms in a thread (may miss peaks shorter than that).
"""
from __future__ import annotations

import ctypes
import datetime
import functools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import threading
import time
from typing import Callable

import torch

RESULTS_DIR = pathlib.Path(os.environ.get("BENCH_RESULTS_DIR") or pathlib.Path(__file__).parent / "results")
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# The GPU targets, stated once (bench_train_step, gpu_check and the README use these): the
# recipes' SFT step (FSDP2, bf16 mixed) at >= 45% MFU of the data-sheet bf16 peak on llama2-1b;
# our DPO step at >= 1.5x TRL's real tokens/s.
MFU_TARGET = 0.45
DPO_VS_TRL_TARGET = 1.5


# ----------------------------------------------------------------------------- results log

@functools.cache
def _git_sha() -> str:
    """The measured code's sha, read once per process: the rows a run appends must not make
    its own later rows look like a dirty tree's."""
    return git_sha(REPO_ROOT)


def git_sha(root: pathlib.Path) -> str:
    """HEAD's short sha, '-dirty' when a tracked file outside bench/results/ has changed: rows
    appended there by an earlier run (a sweep's previous point) are not measured code."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/results"], cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()} x{torch.get_num_threads()} threads"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def run_metadata() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": _git_sha(),
        "device": device_name(),
        "torch": torch.__version__,
        "triton": triton_version,
    }


def print_table(rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def append_results(suite: str, rows: list[dict]) -> pathlib.Path:
    """Append rows to bench/results/<suite>.jsonl (each stamped with run_metadata) and print them."""
    meta = run_metadata()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{suite}.jsonl"
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps({**meta, "suite": suite, **row}) + "\n")
    print(f"# {suite}  {meta['device']}  torch {meta['torch']}  triton {meta['triton']}  "
          f"git {meta['git_sha']}  {meta['date']}")
    print_table(rows)
    print(f"# appended {len(rows)} rows to {path}")
    return path


# ----------------------------------------------------------------------------- CPU

def _proc_status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _malloc_trim() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        # fix the mmap threshold at 1 MiB (glibc otherwise raises it up to 32 MiB after frees,
        # and heap memory is not handed back), so every large tensor is its own mapping
        libc.mallopt(-3, 2**20)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_peak_cpu(fn: Callable[[], object]) -> int:
    """Extra peak resident memory, in bytes, of running fn() on CPU (see the module docstring).

    fn's return value is dropped inside the measurement window; tensors it leaves alive (for
    example .grad fields) count, since they were resident at the peak.
    """
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _proc_status_kb("VmRSS")
        fn()
        return (_proc_status_kb("VmHWM") - before) * 1024
    except OSError:
        pass
    # Fallback: sample RSS in a thread.
    before = _proc_status_kb("VmRSS")
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _proc_status_kb("VmRSS"))
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return (max(peak[0], _proc_status_kb("VmRSS")) - before) * 1024


def time_cpu(fn: Callable[[], object], warmup: int = 1, rep: int = 3) -> float:
    """Median wall time of fn() in milliseconds over rep runs after warmup runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ----------------------------------------------------------------------------- GPU

def time_gpu(fn: Callable[[], object], warmup: int = 25, rep: int = 100, grad_to_none=None) -> float:
    """Median time of fn() in milliseconds via triton.testing.do_bench (L2 flushed between runs;
    warmup and rep are time budgets in ms, as in do_bench; grad_to_none: tensors whose .grad is
    reset before each run, so a timed backward never accumulates)."""
    import triton.testing
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none,
                                   return_mode="median")


def measure_peak_gpu(fn: Callable[[], object]) -> int:
    """Extra peak CUDA memory, in bytes, allocated by fn() above what was live before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


_PEAKS: dict[str, float] = {}


def measured_peaks() -> dict[str, float]:
    """This GPU's measured peaks: bf16 matmul TFLOP/s (8192^3) and copy GB/s (1 GiB clone).

    Measured once per process; a benchmark's '% of peak' is relative to these, so it says how
    close a kernel gets to what this machine actually does, not to a datasheet.
    """
    if not _PEAKS:
        n = 8192
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        ms = time_gpu(lambda: a @ b)
        _PEAKS["matmul_bf16_tflops"] = 2 * n**3 / ms / 1e9
        x = torch.empty(2**30 // 2, device="cuda", dtype=torch.bfloat16)
        ms = time_gpu(lambda: x.clone())
        _PEAKS["copy_gbps"] = 2 * x.numel() * x.element_size() / ms / 1e6  # read + write
        del a, b, x
        torch.cuda.empty_cache()
    return dict(_PEAKS)


def tflops(flops: float, ms: float) -> float:
    return flops / ms / 1e9


def hf_attn_implementation(device: torch.device) -> str:
    """transformers' attention for a baseline: flash-attn 2 on CUDA when installed, else SDPA."""
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401
            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def timed(fn, device: torch.device) -> float:
    """Seconds of one call of fn(), the device synchronised before and after (no warm-up)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0
