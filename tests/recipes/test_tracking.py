"""Experiment tracking on a tiny SFT run, in-process (a 1-process group): TensorBoard's own reader
finds every scalar of metrics.jsonl at the same step (the held-out eval_loss included) and the
resolved config; an offline W&B run leaves its files without any network; a backend that raises
mid-run gives one warning and the run finishes."""
import json
import warnings

import pytest

from ie_engine.engine import trackers
from ie_engine.recipes import sft

from recipe_utils import FAST, metrics

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 3


def tiny_sft(cache_dir, out, *args):
    sft.main([*FAST, f"data.cache_dir={cache_dir}", f"output_dir={out}", f"max_steps={STEPS}", *args])


def test_tensorboard_holds_the_values_of_metrics_jsonl(tmp_path, cache_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    tiny_sft(cache_dir, out, "log.backends=[jsonl,tensorboard]")
    rows = metrics(out)
    events = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    expected = {k for r in rows for k in r if k != "step"}
    assert "eval_loss" in expected  # the held-out loss of the last step goes along
    assert set(events.Tags()["scalars"]) == expected
    for name in expected:
        logged = {(r["step"], r[name]) for r in rows if name in r}
        read = events.Scalars(name)
        assert [e.step for e in read] == [s for s, _ in sorted(logged)], name
        for e, (_, value) in zip(read, sorted(logged)):
            assert e.value == pytest.approx(value, rel=1e-6, abs=1e-12), name  # event files hold float32
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"output_dir: {out}" in config and "backends:" in config


def test_wandb_offline_run_writes_its_files(tmp_path, cache_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    tiny_sft(cache_dir, out, "log.backends=[jsonl,wandb]", "log.wandb.mode=offline", "log.wandb.project=ie-test")
    run_id = (out / "wandb" / "run_id").read_text().strip()
    (run_dir,) = (out / "wandb").glob(f"offline-run-*-{run_id}")
    data = (run_dir / f"run-{run_id}.wandb").read_bytes()
    for name in metrics(out)[-1]:  # the run's records name every scalar of the last step
        assert name.encode() in data, name
    assert b"ie-test" in data and b"global_batch_rows" in data  # the project and the config


def test_a_backend_that_fails_mid_run_warns_once_and_training_finishes(tmp_path, cache_dir, monkeypatch):
    pytest.importorskip("tensorboard")
    calls = {"n": 0}
    real_log = trackers.TensorBoardTracker.log

    def flaky(self, record):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError("disk full")
        real_log(self, record)

    monkeypatch.setattr(trackers.TensorBoardTracker, "log", flaky)
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_sft(cache_dir, out, "log.backends=[jsonl,tensorboard]")
    ours = [w for w in caught if "log.backends" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert "tensorboard failed at step 2" in str(ours[0].message) and "disk full" in str(ours[0].message)
    assert calls["n"] == 2  # dropped after the failure
    assert [r["step"] for r in metrics(out)] == list(range(1, STEPS + 1))
    assert (out / "final" / "config.json").exists()
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == STEPS
