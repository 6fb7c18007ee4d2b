"""GPU recipe smoke tests: the recipes as a user runs them on CUDA, bf16 (parallel.mixed_precision=bf16:
bf16 compute, fp32 master weights and gradient reduction, FSDP2 on a 1-GPU mesh), ~20 steps of the
debug model each. Three SFT launches run at once (their start-up and compiles overlap), then DPO:
four launches on one GPU (issue 20: six, each compiling FlexAttention anew, did not fit the stage).

- SFT with model.attn_backend=flex (parallel.deterministic=true) twice, and with sdpa: the loss
  falls (mean of the last 5 steps below the mean of the first 5), the two flex runs give
  bitwise-identical losses and gradient norms (launched together, so they also contend for the
  GPU), and the final export loads with ie_engine.engine.model.hf_checkpoint.load_hf and with
  transformers.AutoModelForCausalLM and gives finite logits (SDPA forwards at the training shape:
  no FlexAttention compile in this process);
- DPO from the flex SFT export (16 bundled pairs, all in every step, in micro-batches of the SFT
  runs' shape, so FlexAttention's compiled graphs come from inductor's cache): starts at log 2
  (policy = reference), the loss falls, the export loads;
- 2 GPUs (--nproc_per_node 2, the same global batch) give the 1-GPU losses within bf16's rtol 1e-2
  (skipped with fewer than 2 GPUs).

Every test is marked gpu, so tests/conftest.py skips it without CUDA; `python -m ie_engine.bench.gpu_check`
runs them (`pytest -m gpu tests/recipes`) on a GPU machine.
"""
import json
import math
import subprocess
import time
from pathlib import Path

import pytest
import torch

from recipe_utils import FAST, child_env, metrics, run, torchrun_cmd

pytestmark = pytest.mark.gpu

STEPS = 20
DEVICE, PRECISION = "cuda", "bf16"
BF16_RTOL = 1e-2     # 2 GPUs vs 1: bf16 matmuls reduce in another order; fp32 master weights and reduction
DPO_PAIRS = 16
RUN_TIMEOUT_S = 120  # one recipe launch (the first FlexAttention compile is most of it)
SEQ_LEN, ROWS = 256, 2  # FAST's data.seq_len and data.rows_per_micro_batch: the shape every run compiles


def recipe_args(data_dir, output_dir, *extra, steps: int = STEPS) -> list[str]:
    """data_dir: this run's own token-cache directory, so runs launched together never build one cache at once."""
    return [*FAST, f"parallel.mixed_precision={PRECISION}", f"max_steps={steps}", f"data.cache_dir={data_dir}",
            f"output_dir={output_dir}", *extra]


def run_together(jobs: list[tuple[list[str], Path]], timeout: int = RUN_TIMEOUT_S) -> None:
    """Launch (cmd, cwd) jobs at once and wait for all: tiny runs share the GPU, and their
    start-up (imports, compiles) overlaps. Fails with the output of the first failed job."""
    procs = [(cmd, subprocess.Popen(cmd, cwd=cwd, env=child_env(gpu=True), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)) for cmd, cwd in jobs]
    deadline, failed = time.monotonic() + timeout, None
    for cmd, proc in procs:
        try:
            out = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
        except subprocess.TimeoutExpired:
            proc.terminate()  # torchrun passes SIGTERM on to its workers
            try:
                out = proc.communicate(timeout=15)[0]
            except subprocess.TimeoutExpired:
                proc.kill()
                out = proc.communicate()[0]
            out += f"\n(stopped after {timeout} s)"
        if proc.returncode != 0 and failed is None:
            failed = f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-8000:]}"
    if failed:
        raise AssertionError(failed)


def losses(output_dir) -> list[float]:
    return [m["loss"] for m in metrics(output_dir)]


def assert_loss_falls(output_dir) -> None:
    got = losses(output_dir)
    assert len(got) == STEPS and all(math.isfinite(x) for x in got), got
    assert sum(got[-5:]) / 5 < sum(got[:5]) / 5, f"loss did not fall: {got}"


def assert_export_loads(final) -> None:
    """Our loader and transformers both read the export, and both give finite logits on the GPU.
    SDPA at the training shape: a FlexAttention forward here would compile once more, in this
    process, for a no-grad graph that no run uses."""
    from ie_engine.engine.model.hf_checkpoint import load_hf

    vocab = json.loads((final / "config.json").read_text())["vocab_size"]
    ids = torch.randint(0, vocab, (ROWS, SEQ_LEN), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
    ours = load_hf(final, dtype=torch.bfloat16, device=DEVICE).eval()
    ours.attn_backend = "sdpa"
    with torch.no_grad():
        logits = ours(ids)  # (ROWS, SEQ_LEN, vocab)
    assert logits.shape == (ROWS, SEQ_LEN, vocab) and torch.isfinite(logits).all()
    del ours
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(final, dtype=torch.bfloat16,
                                                           attn_implementation="sdpa").to(DEVICE).eval()
    with torch.no_grad():
        hf_logits = hf(input_ids=ids).logits
    assert hf_logits.shape == (ROWS, SEQ_LEN, vocab) and torch.isfinite(hf_logits).all()


@pytest.fixture(scope="module")
def bundled(cache_dir) -> dict[str, str]:
    """The bundled SFT data, DPO pairs and tokenizer, generated once for every run here."""
    from ie_engine.data.bundled import ensure_default_assets

    return ensure_default_assets(cache_dir)


@pytest.fixture(scope="module")
def sft_data(bundled) -> list[str]:
    return [f"data.train_files=[{bundled['sft']}]", f"data.tokenizer={bundled['tokenizer']}"]


SFT_RUNS = {"flex": ["model.attn_backend=flex", "parallel.deterministic=true"],
            "flex_again": ["model.attn_backend=flex", "parallel.deterministic=true"],
            "sdpa": ["model.attn_backend=sdpa"]}


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, sft_data) -> dict[str, Path]:
    """name -> output_dir of a 1-GPU bf16 SFT run (SFT_RUNS), all launched together."""
    outs = {name: tmp_path_factory.mktemp(f"gpu_sft_{name}") for name in SFT_RUNS}
    run_together([(torchrun_cmd("sft.py", 1, recipe_args(out / "cache", out / "run", *sft_data, *SFT_RUNS[name])), out)
                  for name, out in outs.items()])
    return {name: out / "run" for name, out in outs.items()}


@pytest.mark.parametrize("backend", ["flex", "sdpa"])
def test_sft_bf16_loss_falls_and_export_loads(sft_runs, backend):
    out = sft_runs[backend]
    assert_loss_falls(out)
    assert_export_loads(out / "final")


def test_deterministic_runs_repeat_bitwise(sft_runs):
    """The two deterministic flex runs, launched together: the same floats."""
    runs = [[(m["loss"], m["grad_norm"]) for m in metrics(sft_runs[name])] for name in ("flex", "flex_again")]
    assert len(runs[0]) == STEPS
    assert runs[0] == runs[1]  # exact floats


def test_dpo_from_sft_export_loss_falls_and_export_loads(sft_runs, bundled, tmp_path):
    """DPO on the first 16 bundled pairs, all of them in every step (16 rows of one pair each):
    on a fixed batch the loss falls steadily, where 20 steps of fresh 4-pair batches are noise."""
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(json.loads(Path(bundled["dpo"]).read_text())[:DPO_PAIRS]))
    out = tmp_path / "dpo"
    run(torchrun_cmd("dpo.py", 1, recipe_args(tmp_path / "cache", out, f"model.checkpoint={sft_runs['flex'] / 'final'}",
                                              f"data.train_files=[{pairs}]", f"global_batch_rows={DPO_PAIRS}",
                                              "optim.lr=5e-4")),  # FAST's micro-batch shape, as SFT
        cwd=tmp_path, timeout=RUN_TIMEOUT_S, gpu=True)
    # step 1: the policy is the reference, every reward ~0 (bf16 forward), the sigmoid loss log 2
    assert losses(out)[0] == pytest.approx(math.log(2), abs=2e-2)
    assert_loss_falls(out)
    assert_export_loads(out / "final")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_equal_one_gpu(sft_runs, sft_data, tmp_path):
    """The same global batch (4 rows): 1 GPU x 2 micro-batches of 2 rows vs 2 GPUs x 1."""
    out = tmp_path / "two"
    run(torchrun_cmd("sft.py", 2, recipe_args(tmp_path / "cache", out, *sft_data, *SFT_RUNS["flex"])),
        cwd=tmp_path, timeout=RUN_TIMEOUT_S, gpu=True)
    ref = torch.tensor(losses(sft_runs["flex"]), dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(losses(out), dtype=torch.float64), ref, rtol=BF16_RTOL, atol=0)
