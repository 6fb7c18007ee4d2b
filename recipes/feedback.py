"""IEFeedback (ADELIE stage 2a): preference pairs from the SFT model's own answers.

    torchrun --nproc_per_node N recipes/feedback.py model.checkpoint=runs/sft/final \
        'data.files=[/data/ie_prompts.jsonl]' output_dir=OUT

Samples generate.n answers per prompt (ADELIE: 5, temperature 1.0, top_p 1.0, 2048 new tokens;
all sharing one prefill), scores each against the gold answer with character BLEU
(data/char_bleu.py, equal to NLTK's sentence_bleu with method3 smoothing), and builds pairs as
ADELIE's merge.py does (data/feedback.py: best vs worst sample, then gold vs worst). Writes
OUT/feedback.json, which recipes/dpo.py reads as data.train_files unchanged, OUT/scored.jsonl
(record, sample_index, output, score), OUT/stats.json, and the raw samples in OUT/samples/.
Resumable: a killed run resumes its sampling where it stopped. With no arguments: runs/sft/final
on the bundled prompt pool (apart from the SFT data and the held-out test set), into runs/feedback/.
"""
from __future__ import annotations

import json
from pathlib import Path

from ie_engine.engine import launch, parallel
from ie_engine.engine.config import parse_config
from ie_engine.engine.generate.files import generate_files, read_prompts
from ie_engine.engine.generate.setup import checkpoint_config, generation_model, prompt_tokenizer, resolve_files
from ie_engine.engine.run_config import FeedbackConfig

CONFIG = FeedbackConfig  # the schema of this recipe's config
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "feedback_default.yaml"


def scored_items(paths: list[Path], n: int) -> tuple[list[dict], list[dict], int]:
    """Generation outputs (n consecutive lines per record) -> (build_pairs items in prompt order,
    scored lines, records skipped because their gold has no "[Answer]: ")."""
    from ie_engine.data.char_bleu import ANSWER_MARK, score_samples

    items, scored, skipped = [], [], 0
    for path in paths:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for i in range(0, len(lines), n):
            group = lines[i:i + n]
            record = {k: v for k, v in group[0].items() if k not in ("output", "sample_index", "finish_reason",
                                                                      "num_tokens")}
            gold = record["messages"][-1]["content"]
            if ANSWER_MARK not in gold:
                skipped += 1
                continue
            outputs = [g["output"] for g in group]
            scores = score_samples([gold] * len(outputs), outputs)
            items.append({"record": record, "samples": outputs, "scores": scores})
            scored += [{**g, "score": s} for g, s in zip(group, scores)]
    return items, scored, skipped


def write_feedback_outputs(cfg: FeedbackConfig, paths: list[Path]) -> dict:
    """Rank 0: score the samples, build the pairs, write feedback.json, scored.jsonl, stats.json."""
    from ie_engine.data.feedback import build_pairs, write_feedback
    from ie_engine.data.files import write_atomic

    out = Path(cfg.output_dir)
    items, scored, skipped = scored_items(paths, cfg.generate.n)
    f = cfg.feedback
    pairs, stats = build_pairs(items, limit=f.limit, gold_rate=f.gold_rate, min_delta=f.min_delta, seed=cfg.seed,
                               keep_identical=f.keep_identical)
    stats["records_without_answer_in_gold"] = skipped
    write_feedback(pairs, out / "feedback.json")
    write_atomic(out / "scored.jsonl", "".join(json.dumps(s) + "\n" for s in scored))
    write_atomic(out / "stats.json", json.dumps(stats, indent=1) + "\n")
    print("feedback: " + "  ".join(f"{k} {v}" for k, v in stats.items() if not isinstance(v, dict)), flush=True)
    return stats


def main(argv=None):
    cfg = parse_config(CONFIG, launch.with_default_config(argv, DEFAULT_CONFIG))  # 1. config (checked)
    model_cfg = checkpoint_config(cfg.model.checkpoint)                            # 2. the checkpoint exists
    world = launch.start(cfg)                                                      # 3. distributed
    try:
        files = resolve_files(cfg.data.files, cfg.data.cache_dir, world)          # 4. prompts, checked
        tokenizer = prompt_tokenizer(cfg.data.tokenizer, cfg.model.checkpoint, cfg.data.cache_dir, world,
                                     model_cfg.vocab_size)
        prompts = read_prompts(files, tokenizer, cfg.data.max_records, model_cfg.max_seq_len)
        model = generation_model(cfg.generate.backend, cfg.model.checkpoint, world, cfg.parallel,  # 5. model
                                 cfg.model.attn_backend)
        paths = generate_files(cfg.generate, model, tokenizer, files, Path(cfg.output_dir) / "samples", world,
                               seed=cfg.seed, max_records=cfg.data.max_records, prompts=prompts)  # 6. sample
        if world.rank == 0:                                                        # 7. score, pair, write
            write_feedback_outputs(cfg, paths)
    finally:
        parallel.destroy_distributed()


if __name__ == "__main__":
    launch.run_recipe(main)
