"""Evaluation on held-out IE test sets with ADELIE's scorers: generate (greedy, at most 2048 new
tokens by default, as ADELIE evaluates), score, write the table.

    torchrun --nproc_per_node N recipes/eval.py model.checkpoint=DIR 'eval.files=[A.jsonl,B.jsonl]' output_dir=OUT
    python recipes/eval.py --score-only PRED.jsonl [PRED.jsonl ...] --out metrics.json

The first writes OUT/<input file name> (predictions), OUT/metrics.json ({file: {"task",
"precision", "recall", "f1", "n", ...}}, fractions) and OUT/metrics.md (percent, as the paper).
The second scores prediction files made elsewhere (vLLM, ADELIE's own scripts) without a model.
With no arguments: runs/sft/final on the bundled held-out IE set, into runs/eval/. Scorers and
their quirks: data/scoring/; the paper's numbers: Qi et al. 2024, ADELIE, Tables 2-4.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ie_engine.engine import launch, parallel
from ie_engine.engine.config import parse_config
from ie_engine.engine.generate.evaluation import evaluate_checkpoint
from ie_engine.engine.run_config import EvalConfig

CONFIG = EvalConfig  # the schema of this recipe's config
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "eval_default.yaml"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--score-only":  # no model: data/scoring's command line
        from ie_engine.data.scoring.__main__ import main as score_main
        return score_main(argv[1:])
    cfg = parse_config(CONFIG, launch.with_default_config(argv, DEFAULT_CONFIG))  # 1. config (checked)
    world = launch.start(cfg)                                                      # 2. distributed
    try:                                                                           # 3. generate, score
        evaluate_checkpoint(cfg.model.checkpoint, cfg.eval, cfg.output_dir, world, cfg.parallel, cfg.seed,
                            cfg.model.attn_backend)
    finally:
        parallel.destroy_distributed()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--score-only"]:
        sys.exit(main())
    launch.run_recipe(main)
