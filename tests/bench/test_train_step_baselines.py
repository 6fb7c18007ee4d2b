"""bench_train_step's cases on the device's package set (issue 20, findings 9 and 10): without
trl every baseline that can run still runs (transformers' padded step, TRL's logits path through
selective_log_softmax written by its definition) and only TRL's own fused path is n/a; the
recipes' FSDP2 step is a case of its own; all of them agree on the loss and gradient norm."""
import pytest
import torch
import torch.distributed as dist

from ie_engine.bench import bench_train_step as bts
from ie_engine.bench import train_step_losses

CPU, FP32 = torch.device("cpu"), torch.float32


def test_selective_log_softmax_by_definition_equals_trls():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 17, 53, generator=g, dtype=torch.float64)
    index = torch.randint(0, 53, (3, 17), generator=g)
    want = torch.log_softmax(logits, -1).gather(-1, index[..., None])[..., 0]
    torch.testing.assert_close(train_step_losses.selective_log_softmax_by_definition(logits, index), want)
    trl_utils = pytest.importorskip("trl.trainer.utils")
    for dtype in (torch.float32, torch.bfloat16):
        x = logits.to(dtype)
        torch.testing.assert_close(train_step_losses.selective_log_softmax_by_definition(x, index),
                                   trl_utils.selective_log_softmax(x, index))


def test_without_trl_every_other_baseline_runs_and_all_agree(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    monkeypatch.setattr(bts, "have", lambda module: module != "trl")
    had_group = dist.is_initialized()
    only = ["ours_fused_packed", "ours_fsdp_packed", "hf_padded", "ours_dpo_packed", "trl_"]
    cases, facts = bts.build_cases(bts.PRESETS["tiny"], CPU, FP32, str(tmp_path), 8, only)
    try:
        assert [c.name for c in cases] == ["ours_fused_packed", "ours_fsdp_packed", "hf_padded",
                                           "ours_dpo_packed", "trl_logits_padded"]
        assert facts["not_run"] == {"trl_fused_padded": "trl not installed"}
        assert facts["trl_log_softmax"].startswith("by definition")
        assert next(c for c in cases if c.name == "ours_fsdp_packed").precision == "fsdp_mixed"
        first = {c.name: c.run() for c in cases}
        assert bts.check_agreement(cases, first, rtol=2e-4) == []
    finally:
        if dist.is_initialized() and not had_group:  # ours_fsdp_packed's 1-process group
            dist.destroy_process_group()
