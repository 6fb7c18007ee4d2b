"""Generation from a Hugging Face checkpoint: ADELIE's evaluation answers and IEFeedback samples.

    torchrun --nproc_per_node N recipes/generate.py model.checkpoint=DIR 'data.files=[A.jsonl,B.jsonl]' \\
        output_dir=OUT generate.n=5 generate.temperature=1.0 generate.top_p=1.0 \\
        generate.max_new_tokens=2048 seed=0

With no arguments: greedy answers of runs/sft/final (the SFT recipe's default output) to the
first 32 records of the bundled IE data, into runs/generate/. Each rank holds a full model copy
(bf16 on CUDA, fp32 on CPU) and takes a share of the prompts; outputs are OUT/<input file name>;
a killed run resumes where it stopped (engine/generate_files.py). A model that does not fit one
GPU: generate.backend=vllm generate.tensor_parallel=G, launched as one process.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402

from engine import launch, parallel  # noqa: E402
from engine.config import ConfigError, parse_config  # noqa: E402
from engine.generate import build_generation_model  # noqa: E402
from engine.generate_files import generate_files, read_prompts  # noqa: E402
from engine.hf_checkpoint import config_from_hf  # noqa: E402
from engine.model_config import ModelConfig  # noqa: E402
from engine.run_config import GenerateConfig  # noqa: E402

CONFIG = GenerateConfig  # the schema of this recipe's config
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "generate_default.yaml"
BUNDLED_RECORDS = 32  # records of the bundled data that the default (no data.files) answers


def checkpoint_config(cfg: GenerateConfig) -> ModelConfig:
    """The checkpoint's architecture (config.json), or a ConfigError naming model.checkpoint."""
    path = Path(cfg.model.checkpoint)
    if not (path / "config.json").is_file():
        hint = " (train one first: torchrun recipes/sft.py)" if cfg.model.checkpoint == "runs/sft/final" else ""
        what = "has no config.json" if path.is_dir() else "does not exist"
        raise ConfigError(f"model.checkpoint: {path} {what}{hint}")
    return config_from_hf(json.loads((path / "config.json").read_text()))


def prompt_inputs(cfg: GenerateConfig, world: parallel.World, vocab_size: int):
    """-> (files, max_records, Tokenizer): data.files or the bundled records; data.tokenizer, else
    the checkpoint's, else the bundled one; its vocabulary must be the model's."""
    from data.tokenizer import Tokenizer

    files, max_records = list(cfg.data.files), cfg.data.max_records
    tokenizer = cfg.data.tokenizer or str(Path(cfg.model.checkpoint) / "tokenizer.model")
    if not cfg.data.tokenizer and not Path(tokenizer).exists():
        tokenizer = ""
    if not files or not tokenizer:
        from data.bundled import ensure_default_assets
        if world.rank == 0:
            ensure_default_assets(cfg.data.cache_dir)
        parallel.barrier()
        assets = ensure_default_assets(cfg.data.cache_dir)
        if not files:
            files, max_records = [assets["sft"]], max_records or BUNDLED_RECORDS
        tokenizer = tokenizer or assets["tokenizer"]
    if not Path(tokenizer).is_file():
        raise ConfigError(f"data.tokenizer: {tokenizer} does not exist")
    tok = Tokenizer(tokenizer)
    if tok.vocab_size != vocab_size:
        raise ConfigError(f"data.tokenizer: {tokenizer} has {tok.vocab_size} pieces but model.checkpoint "
                          f"{cfg.model.checkpoint} has vocab_size {vocab_size}: not the model's tokenizer")
    return files, max_records, tok


def main(argv=None):
    cfg = parse_config(CONFIG, launch.with_default_config(argv, DEFAULT_CONFIG))  # 1. config (checked)
    model_cfg = checkpoint_config(cfg)                             # 2. the checkpoint exists
    world = launch.start(cfg)                                      # 3. distributed
    try:
        files, max_records, tokenizer = prompt_inputs(cfg, world, model_cfg.vocab_size)  # 4. inputs
        prompts = read_prompts(files, tokenizer, max_records, model_cfg.max_seq_len)  # 5. every record checked
        bf16 = parallel.resolve_precision(cfg.parallel, world.device) != "fp32"
        if cfg.generate.backend == "vllm":                         # 6. model: a full copy per rank
            model = cfg.model.checkpoint
        else:
            model = build_generation_model(cfg.model.checkpoint, world.device,
                                           torch.bfloat16 if bf16 else torch.float32, cfg.model.attn_backend)
        generate_files(cfg.generate, model, tokenizer, files, cfg.output_dir, world,  # 7. generate, write
                       seed=cfg.seed, max_records=max_records, prompts=prompts)
    finally:
        parallel.destroy_distributed()


if __name__ == "__main__":
    launch.run_recipe(main)
