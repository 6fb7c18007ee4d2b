"""engine/trackers.py without a model: a backend that fails to start or mid-run gives one warning
and the others go on; log.backends is checked when the config is parsed (a missing package, a
name given twice, an unknown name), naming the key."""
import warnings

import pytest

from ie_engine.engine import run_config
from ie_engine.engine.config import ConfigError, parse_config
from ie_engine.engine.run_config import DPOConfig, RunConfig
from ie_engine.engine.trackers import JsonlTracker, Trackers, scalars


class Recorder:
    def __init__(self, fail_at=None):
        self.records, self.fail_at, self.closed = [], fail_at, False

    def log(self, record):
        if record["step"] == self.fail_at:
            raise ConnectionError("server went away")
        self.records.append(record)

    def close(self):
        self.closed = True


def _raise():
    raise RuntimeError("no credentials")


def test_failures_warn_once_and_the_other_backends_go_on():
    good, flaky = Recorder(), Recorder(fail_at=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = Trackers({"jsonl": lambda: good, "wandb": _raise, "tensorboard": lambda: flaky})
        for step in range(1, 6):
            t.log({"step": step, "loss": 1.0 / step})
        t.close()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert "wandb could not start (RuntimeError: no credentials)" in messages[0]
    assert "tensorboard failed at step 2 (ConnectionError: server went away)" in messages[1]
    assert "still logging to: jsonl" in messages[1]
    assert [r["step"] for r in good.records] == [1, 2, 3, 4, 5] and good.closed
    assert [r["step"] for r in flaky.records] == [1] and not flaky.closed  # dropped, never called again


def test_scalars_are_the_numbers_without_the_step():
    assert scalars({"step": 3, "loss": 1.5, "tokens_per_s": 10, "flag": True, "note": "x"}) == \
        {"loss": 1.5, "tokens_per_s": 10}


def test_jsonl_restarts_fresh_and_keeps_the_steps_up_to_a_resumed_checkpoint(tmp_path):
    t = JsonlTracker(str(tmp_path), 0, resumed=False)
    for step in range(1, 6):
        t.log({"step": step, "loss": float(step)})
    JsonlTracker(str(tmp_path), 3, resumed=True)
    assert [l for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        ['{"step": 1, "loss": 1.0}', '{"step": 2, "loss": 2.0}', '{"step": 3, "loss": 3.0}']
    JsonlTracker(str(tmp_path), 0, resumed=False)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("schema", [RunConfig, DPOConfig])
def test_default_is_jsonl_and_the_wandb_keys_parse(schema):
    assert parse_config(schema, []).log.backends == ["jsonl"]
    cfg = parse_config(schema, ["log.wandb.mode=offline", "log.wandb.project=p", "log.wandb.name=n"])
    assert (cfg.log.wandb.mode, cfg.log.wandb.project, cfg.log.wandb.name) == ("offline", "p", "n")


@pytest.mark.parametrize("backend, package", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_a_backend_without_its_package_is_a_config_error(backend, package, monkeypatch):
    monkeypatch.setattr(run_config, "package_installed", lambda name: name != package)
    with pytest.raises(ConfigError, match=rf"log\.backends: {backend} needs the {package} package.*pip install {package}"):
        parse_config(RunConfig, [f"log.backends=[jsonl,{backend}]"])


@pytest.mark.parametrize("value, match", [
    ("[jsonl,jsonl]", r"log\.backends names a backend twice"),
    ("[jsonl,mlflow]", r"'log\.backends\[1\]': expected one of \['jsonl', 'tensorboard', 'wandb'\]"),
    ("[jsonl]", None),
])
def test_log_backends_are_checked_at_parse_time(value, match, monkeypatch):
    if match is None:
        parse_config(RunConfig, [f"log.backends={value}"])
        return
    with pytest.raises(ConfigError, match=match):
        parse_config(RunConfig, [f"log.backends={value}", "log.wandb.mode=offline"])
