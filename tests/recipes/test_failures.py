"""Failure behaviour, in-process (a 1-process group): a non-finite loss stops the run naming the
step and leaves the last good checkpoint; bad data is reported before any model is built."""
import json
import math
from pathlib import Path

import pytest

import ie_engine.engine.train.fit as fit
import ie_engine.engine.train.model_setup as model_setup
from ie_engine.recipes import sft

from recipe_utils import FAST

pytestmark = pytest.mark.usefixtures("one_thread")


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, cache_dir, monkeypatch):
    real_step = fit.train_step
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out["loss"] = math.nan
        return out

    monkeypatch.setattr(fit, "train_step", poisoned)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"at step 3.*step-00000002"):
        sft.main([*FAST, f"data.cache_dir={cache_dir}", f"output_dir={out}", "max_steps=5", "save_every=2"])
    assert (out / "checkpoints" / "step-00000002" / "COMPLETE").exists()
    assert not (out / "final").exists()
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_bad_record_is_reported_before_the_model_is_built(tmp_path, cache_dir, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    good = {"dataset": "x", "id": 1, "messages": [{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": "[Answer]: none"}]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"dataset": "x", "id": 2, "messages": [{"role": "bot"}]}) + "\n")

    def no_model(*a, **k):
        raise AssertionError("the model was built before the data error was reported")

    monkeypatch.setattr(model_setup, "build_model", no_model)
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        sft.main([*FAST, f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}",
                  f"data.train_files=[{bad}]", f"data.tokenizer={_bundled_tokenizer(cache_dir)}"])


def _bundled_tokenizer(cache_dir: Path) -> Path:
    from ie_engine.data.bundled import ensure_default_assets
    return Path(ensure_default_assets(str(cache_dir))["tokenizer"])
