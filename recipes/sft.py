"""Supervised fine-tuning (ADELIE stage 1) on packed IE conversations.

    torchrun --nproc_per_node N recipes/sft.py [--config FILE] [key=value ...]

With no arguments: the embedded default, a tiny LLaMA trained on the bundled IE data with the
bundled tokenizer, writing runs/sft/ (final Hugging Face export in runs/sft/final).
The loss is the fused head cross-entropy: logits are never materialised.
"""
from __future__ import annotations

from pathlib import Path

from ie_engine.engine import launch, parallel
from ie_engine.engine.config import parse_config
from ie_engine.engine.run_config import RunConfig
from ie_engine.engine.train import fit
from ie_engine.engine.train.data_setup import prepare_data
from ie_engine.engine.train.losses import sft_loss
from ie_engine.engine.train.model_setup import build_and_load

# The embedded default (no --config given): a tiny LLaMA on the bundled data, ~10 minutes on an
# idle 2-core CPU with --nproc_per_node 2 (configs/sft_default.yaml says why that budget). ADELIE's Llama-2-7B settings: configs/sft_llama2_7b.yaml.
CONFIG = RunConfig  # the schema of this recipe's config
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "sft_default.yaml"


def count_tokens(batch) -> int:
    return int((batch["labels"] != -100).sum())


def main(argv=None):
    cfg = parse_config(CONFIG, launch.with_default_config(argv, DEFAULT_CONFIG))  # 1. config (checked)
    world = launch.start(cfg)                                    # 2. distributed
    try:
        cache, tokenizer = prepare_data(cfg, world, "sft")       # 3. tokenizer + data (before the model)
        heldout, _ = prepare_data(cfg, world, "sft", heldout=True)
        model = build_and_load(cfg, world, cache.vocab_size)     # 4. model: meta -> FSDP -> init/load
        run = fit.setup_training(cfg, world, model, cache)       # 5. optimizer, schedule, resume
        evaluate = (lambda: fit.evaluate(run, heldout, sft_loss, count_tokens)) if heldout else None
        fit.train(run, sft_loss, count_tokens, eval_fn=evaluate)  # 6. the loop (+ held-out loss)
        fit.finish(run, tokenizer)                               # 7. final state + HF export
    finally:
        parallel.destroy_distributed()


if __name__ == "__main__":
    launch.run_recipe(main)
