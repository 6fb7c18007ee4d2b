"""The config system: file + dotted overrides, unknown keys and wrong types name the key."""
from dataclasses import dataclass, field
from typing import Literal

import pytest

from ie_engine.engine.config import ConfigError, dump_config, format_config, parse_config
from ie_engine.engine.model.config import ModelConfig


@dataclass
class Optim:
    lr: float = 1e-3
    """Peak learning rate."""
    schedule: Literal["cosine", "linear"] = "cosine"
    """Schedule after warmup."""


@dataclass
class Run:
    output_dir: str = "runs/x"
    """Where to write."""
    max_steps: int | None = None
    """Stop after this many steps."""
    compile: bool = False
    """torch.compile blocks."""
    optim: Optim = field(default_factory=Optim)
    """Optimizer settings."""


def test_file_then_overrides_win(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("max_steps: 10\noptim:\n  lr: 0.5\n  schedule: linear\n")
    cfg = parse_config(Run, ["optim.lr=2e-5", "--config", str(f), "compile=true"])
    assert cfg.max_steps == 10 and cfg.optim.lr == 2e-5 and cfg.optim.schedule == "linear"
    assert cfg.compile is True


def test_toml_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('output_dir = "o"\n[optim]\nlr = 3\n')
    cfg = parse_config(Run, ["--config", str(f)])
    assert cfg.output_dir == "o" and cfg.optim.lr == 3.0 and isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize("arg, key", [("optim.lrr=1", "optim.lrr"), ("nope=1", "nope"),
                                      ("optim.lr.x=1", "optim.lr")])
def test_unknown_keys_name_the_key(arg, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(Run, [arg])


@pytest.mark.parametrize("arg, key", [("max_steps=abc", "max_steps"), ("compile=3", "compile"),
                                      ("optim.schedule=step", "optim.schedule"), ("optim.lr=fast", "optim.lr")])
def test_wrong_types_name_the_key(arg, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(Run, [arg])


def test_unknown_key_in_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  betas: [0.9, 0.95]\n")
    with pytest.raises(ConfigError, match=r"optim\.betas"):
        parse_config(Run, ["--config", str(f)])


def test_null_and_strings(tmp_path):
    cfg = parse_config(Run, ["max_steps=null", "output_dir=123"])
    assert cfg.max_steps is None and cfg.output_dir == "123"
    dump_config(cfg, tmp_path / "c.yaml")
    assert parse_config(Run, ["--config", str(tmp_path / "c.yaml")]) == cfg
    assert "output_dir: '123'" in format_config(cfg)


def test_defaults_are_not_shared():
    a = parse_config(Run, ["optim.lr=1"])
    b = parse_config(Run, [])
    assert b.optim.lr == 1e-3 and a.optim.lr == 1.0


def test_model_config_from_params_json(tmp_path):
    f = tmp_path / "params.json"
    f.write_text('{"dim": 8192, "multiple_of": 4096, "ffn_dim_multiplier": 1.3, "n_heads": 64, '
                 '"n_kv_heads": 8, "n_layers": 80, "norm_eps": 1e-05, "vocab_size": -1}')
    cfg = ModelConfig.from_params_json(f)
    assert cfg.vocab_size == 32000 and cfg.hidden_dim == 28672 and cfg.head_dim == 128


@pytest.mark.parametrize("override, key", [
    ("dpo.beta=0", "dpo.beta"), ("dpo.beta=-1", "dpo.beta"),
    ("dpo.label_smoothing=0.6", "dpo.label_smoothing"),  # sigmoid allows [0, 1]: 0.6 is fine, see below
    ("optim.lr=0", "optim.lr"), ("optim.warmup_ratio=2", "optim.warmup_ratio"),
    ("data.rows_per_micro_batch=0", "data.rows_per_micro_batch"), ("global_batch_rows=3", "global_batch_rows"),
    ("model.preset=nope", "model.preset"), ("parallel.dp_replicate=3", "parallel.dp_replicate"),
])
def test_constraints_fail_at_parse_time_naming_the_key(override, key):
    from ie_engine.engine.run_config import DPOConfig
    base = ["global_batch_rows=4", "data.rows_per_micro_batch=2"]
    if override == "dpo.label_smoothing=0.6":
        parse_config(DPOConfig, base + [override])  # cDPO: a flip probability in [0, 1]
        override = "dpo.loss_type=robust dpo.label_smoothing=0.6"
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(DPOConfig, base + override.split())


def test_label_smoothing_is_meaningless_for_ipo():
    from ie_engine.engine.run_config import DPOConfig
    with pytest.raises(ConfigError, match=r"dpo\.label_smoothing"):
        parse_config(DPOConfig, ["dpo.loss_type=ipo", "dpo.label_smoothing=0.1"])
    assert parse_config(DPOConfig, ["dpo.loss_type=ipo"]).dpo.loss_type == "ipo"


def test_model_shape_overrides_replace_the_presets_fields():
    """model.dim / n_layers / n_heads / n_kv_heads reshape a fresh model (the default sweep's
    architecture lever); a bad shape or one given with a checkpoint fails at parse time."""
    from ie_engine.engine.run_config import RunConfig as SFTConfig
    from ie_engine.engine.train.model_setup import model_config
    cfg = parse_config(SFTConfig, ["model.preset=default-ie", "model.n_layers=2", "model.dim=192", "model.n_heads=6",
                                   "model.n_kv_heads=3"])
    m = model_config(cfg, vocab_size=1000)
    assert (m.n_layers, m.dim, m.n_heads, m.n_kv_heads, m.vocab_size, m.tie_embeddings) == (2, 192, 6, 3, 1000, True)
    assert model_config(parse_config(SFTConfig, ["model.preset=default-ie", "model.dim=128"]), 1000).n_layers == 2
    with pytest.raises(ConfigError, match="head_dim"):
        parse_config(SFTConfig, ["model.preset=default-ie", "model.dim=200", "model.n_heads=8", "model.n_kv_heads=8"])
    with pytest.raises(ConfigError, match="checkpoint"):
        parse_config(SFTConfig, ["model.checkpoint=some/dir", "model.n_layers=2"])
