"""What the generation, evaluation and feedback recipes need before any model exists: the
checkpoint's architecture (or a ConfigError naming model.checkpoint), and the prompt files with
their tokenizer, checked against the model's vocabulary.

Bundled names in a file list (the embedded defaults; data/bundled.py writes them once):
  bundled          the held-out IE test set (never in the SFT or DPO training data)
  bundled-prompts  the IEFeedback prompt pool (apart from training and from the test set)
"""
from __future__ import annotations

import json
from pathlib import Path

from ie_engine.engine import parallel
from ie_engine.engine.config import ConfigError
from ie_engine.engine.model.config import ModelConfig
from ie_engine.engine.model.hf_checkpoint import config_from_hf

BUNDLED = {"bundled": "heldout", "bundled-prompts": "prompts"}


def checkpoint_config(checkpoint: str) -> ModelConfig:
    """The checkpoint's architecture (config.json), or a ConfigError naming model.checkpoint."""
    path = Path(checkpoint)
    if not checkpoint or not (path / "config.json").is_file():
        hint = " (train one first: torchrun recipes/sft.py)" if checkpoint.startswith("runs/sft") else ""
        what = "has no config.json" if path.is_dir() else "does not exist"
        raise ConfigError(f"model.checkpoint: {path} {what}{hint}")
    return config_from_hf(json.loads((path / "config.json").read_text()))


def bundled_assets(cache_dir: str, world: parallel.World) -> dict[str, str]:
    """data/bundled.py's files (rank 0 writes them once; every rank gets the paths)."""
    from ie_engine.data.bundled import ensure_default_assets
    if world.rank == 0:
        ensure_default_assets(cache_dir)
    parallel.barrier()
    return ensure_default_assets(cache_dir)


def resolve_files(files: list[str], cache_dir: str, world: parallel.World) -> list[str]:
    """`files` with the bundled names replaced by their paths."""
    if not any(f in BUNDLED for f in files):
        return list(files)
    assets = bundled_assets(cache_dir, world)
    return [assets[BUNDLED[f]] if f in BUNDLED else f for f in files]


def prompt_tokenizer(tokenizer: str, checkpoint: str, cache_dir: str, world: parallel.World, vocab_size: int):
    """data.tokenizer, else the checkpoint's (tokenizer.model, else tokenizer.json), else the
    bundled one, checked against the model's vocabulary: a sentencepiece model has exactly the
    model's ids; a tokenizer.json may have fewer (Qwen2.5 pads its embedding past its ids)."""
    from ie_engine.data.tokenizer import Tokenizer, find_tokenizer

    path = tokenizer
    if not path:
        try:
            path = find_tokenizer(checkpoint)
        except FileNotFoundError:
            path = bundled_assets(cache_dir, world)["tokenizer"]
    if not Path(path).is_file():
        raise ConfigError(f"data.tokenizer: {path} does not exist")
    tok = Tokenizer(path)
    if tok.vocab_size > vocab_size or (tok.kind == "sentencepiece" and tok.vocab_size != vocab_size):
        raise ConfigError(f"data.tokenizer: {path} has {tok.vocab_size} pieces but model.checkpoint {checkpoint} "
                          f"has vocab_size {vocab_size}: not the model's tokenizer")
    return tok


def generation_model(backend: str, checkpoint: str, world: parallel.World, pcfg, attn_backend: str = "auto"):
    """What generate_files takes: a full model copy on this rank (bf16 on CUDA unless
    parallel.mixed_precision=fp32; fp32 on CPU), or for the vLLM backend the checkpoint path."""
    if backend == "vllm":
        return checkpoint
    import torch

    from ie_engine.engine.generate.generator import build_generation_model
    bf16 = parallel.resolve_precision(pcfg, world.device) != "fp32"
    return build_generation_model(checkpoint, world.device, torch.bfloat16 if bf16 else torch.float32, attn_backend)
