"""A run's model: config from the checkpoint or preset -> built on meta -> parallelized ->
materialised -> loaded from the Hugging Face checkpoint or initialised from the seed.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ie_engine.engine import parallel
from ie_engine.engine.config import ConfigError
from ie_engine.engine.model.config import ModelConfig, build_model_config
from ie_engine.engine.model.hf_checkpoint import config_from_hf, load_hf
from ie_engine.engine.model.transformer import Transformer, build_model
from ie_engine.engine.run_config import RunConfig


def model_config(cfg: RunConfig, vocab_size: int) -> ModelConfig:
    """The architecture: the checkpoint's config.json, else the preset with the tokenizer's
    vocabulary. A checkpoint's embedding may have more rows than the tokenizer has ids (Qwen2.5
    pads 151,665 to 151,936), never fewer."""
    if cfg.model.checkpoint:
        config_path = Path(cfg.model.checkpoint) / "config.json"
        if not config_path.exists():
            raise ConfigError(f"model.checkpoint: {config_path} does not exist")
        mcfg = config_from_hf(json.loads(config_path.read_text()))
        if mcfg.vocab_size < vocab_size:
            raise ConfigError(f"model.checkpoint has vocab {mcfg.vocab_size} but the tokenizer {vocab_size} ids")
    else:
        mcfg = build_model_config(cfg.model.preset, vocab_size=vocab_size, **cfg.model.overrides())
    return dataclasses.replace(mcfg, attn_backend=cfg.model.attn_backend)


def build_and_load(cfg: RunConfig, world: parallel.World, vocab_size: int, trainable: bool = True) -> Transformer:
    """Model on meta -> parallelize -> materialise -> load the checkpoint or initialise."""
    model = build_model(model_config(cfg, vocab_size), "meta")
    model = parallel.parallelize(model, cfg.parallel, world)
    parallel.materialize(model, world, cfg.parallel, cfg.seed)
    if cfg.model.checkpoint:  # rank 0 reads the safetensors; each rank keeps its own shard
        full = load_hf(cfg.model.checkpoint, dtype=torch.float32).state_dict() if world.rank == 0 else {}
        parallel.load_full_state_dict(model, full, broadcast_from_rank0=world.world_size > 1)
    model.train(trainable)
    model.requires_grad_(trainable)
    return model
