"""Generate answers to IE test files with a checkpoint and score them with ADELIE's scorers
(data/scoring), what recipes/eval.py runs and what the SFT/DPO recipes run on their export when
eval.files is set:

    metrics = evaluate_checkpoint(checkpoint, cfg.eval, out_dir, world, pcfg, seed)

writes out_dir/<input file name> (the predictions: each test record plus "output"; ADELIE's own
layout, so its scripts read them too), out_dir/metrics.json ({file name: {"task", "precision",
"recall", "f1", "n", ...}} with fractions in [0, 1]) and out_dir/metrics.md (the table in percent,
as the paper shows). Generation is greedy by default (ADELIE's evaluation setting).
"""
from __future__ import annotations

import json
from pathlib import Path

from ie_engine.engine import parallel
from ie_engine.engine.generate.files import generate_files, read_prompts
from ie_engine.engine.generate.setup import checkpoint_config, generation_model, prompt_tokenizer, resolve_files


def scoring_options(section) -> dict:
    return {"sim_model": section.sim_model or None, "gold": section.openie_gold or None}


def write_metrics(metrics: dict, out_dir: Path) -> str:
    """metrics.json and metrics.md in out_dir; returns the markdown table."""
    from ie_engine.data.files import write_atomic
    from ie_engine.data.scoring import format_markdown
    table = format_markdown(metrics)
    write_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_atomic(out_dir / "metrics.md", table)
    return table


def evaluate_checkpoint(checkpoint: str, section, out_dir: str | Path, world: parallel.World, pcfg,
                        seed: int = 0, attn_backend: str = "auto") -> dict:
    """Generate (section.generate settings) answers of `checkpoint` to section.files and score
    them; every rank calls it (each holds a full model copy and a share of the prompts). Returns
    {file name: metrics} on every rank."""
    from ie_engine.data.scoring import score_files

    out_dir = Path(out_dir)
    model_cfg = checkpoint_config(checkpoint)
    files = resolve_files(section.files, section.cache_dir, world)
    tokenizer = prompt_tokenizer(section.tokenizer, checkpoint, section.cache_dir, world, model_cfg.vocab_size)
    prompts = read_prompts(files, tokenizer, section.max_records, model_cfg.max_seq_len)
    model = generation_model(section.generate.backend, checkpoint, world, pcfg, attn_backend)
    paths = generate_files(section.generate, model, tokenizer, files, out_dir, world, seed=seed,
                           max_records=section.max_records, prompts=prompts)
    del model
    metrics = None
    if world.rank == 0:
        metrics = score_files(paths, section.task or None, **scoring_options(section))
        print(write_metrics(metrics, out_dir), end="", flush=True)
    return parallel.broadcast_object(metrics)
