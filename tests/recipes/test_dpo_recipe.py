"""DPO recipe: runs end to end from an SFT export on 2 ranks with cached reference log-probs,
and the cached reference gives exactly the losses of a frozen reference model."""
import pytest
import torch

from recipe_utils import FAST, metrics, run, torchrun_cmd


def dpo_args(cache_dir, sft_run, out, *extra):
    return [*FAST, f"data.cache_dir={cache_dir}", f"output_dir={out}", f"model.checkpoint={sft_run / 'final'}",
            "max_steps=4", "optim.lr=1e-3", *extra]


def test_dpo_runs_from_sft_export_on_two_ranks(tmp_path, cache_dir, sft_run):
    out = tmp_path / "dpo"
    run(torchrun_cmd("dpo.py", 2, dpo_args(cache_dir, sft_run, out)), cwd=tmp_path)
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"):
        assert all(isinstance(r[key], float) for r in rows), key
    # Step 1: the policy is the reference, so every reward is 0 and the sigmoid loss is log 2.
    assert rows[0]["loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-4)
    assert abs(rows[0]["chosen_reward"]) < 1e-4 and abs(rows[0]["rejected_reward"]) < 1e-4
    assert list((cache_dir / "dpo-seq256").glob("ref_logps-*.npy"))
    assert (out / "final" / "model.safetensors").exists()


def test_cached_reference_equals_frozen_reference(tmp_path, cache_dir, sft_run):
    losses = {}
    for mode in ("cached", "frozen"):
        out = tmp_path / mode
        run(torchrun_cmd("dpo.py", 1, dpo_args(cache_dir, sft_run, out, f"dpo.reference={mode}",
                                               "data.rows_per_micro_batch=4")), cwd=tmp_path)
        losses[mode] = torch.tensor([r["loss"] for r in metrics(out)], dtype=torch.float64)
    torch.testing.assert_close(losses["cached"], losses["frozen"], rtol=1e-5, atol=1e-6)


def test_bad_config_fails_before_any_model_is_built(tmp_path, cache_dir):
    import subprocess

    from recipe_utils import child_env
    proc = subprocess.run(torchrun_cmd("dpo.py", 1, [f"output_dir={tmp_path}", "dpo.beta=strong"]),
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "dpo.beta" in proc.stderr


def test_reference_cache_key_covers_precision_backend_and_weights(tmp_path):
    """An fp32-scored cache must not be reused for a bf16 run, nor an sdpa one for flex."""
    from types import SimpleNamespace

    import torch

    from ie_engine.engine.config import parse_config
    from ie_engine.engine.parallel import World
    from ie_engine.recipes import dpo

    world = World(0, 1, 0, torch.device("cpu"), "gloo")
    keys = {}
    for precision in ("fp32", "bf16"):
        for backend in ("sdpa", "flex"):
            cfg = parse_config(dpo.CONFIG, [f"parallel.mixed_precision={precision}", "model.preset=debug"])
            model = SimpleNamespace(cfg=SimpleNamespace(attn_backend=backend))
            keys[precision, backend] = dpo.reference_cache_key(cfg, world, model)
    assert len(set(keys.values())) == 4
    cfg = parse_config(dpo.CONFIG, ["seed=1"])
    assert dpo.reference_cache_key(cfg, world, model) != keys["fp32", "flex"]
