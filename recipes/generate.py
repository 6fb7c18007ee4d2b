"""Generation from a Hugging Face checkpoint: ADELIE's evaluation answers and IEFeedback samples.

    torchrun --nproc_per_node N recipes/generate.py model.checkpoint=DIR 'data.files=[A.jsonl,B.jsonl]' \\
        output_dir=OUT generate.n=5 generate.temperature=1.0 generate.top_p=1.0 \\
        generate.max_new_tokens=2048 seed=0

With no arguments: greedy answers of runs/sft/final (the SFT recipe's default output) to the
bundled held-out IE test set (data.files empty = [bundled]), into runs/generate/heldout.jsonl.
Each rank holds a full model copy (bf16 on CUDA, fp32 on CPU) and takes a share of the prompts;
outputs are OUT/<input file name>;
a killed run resumes where it stopped (engine/generate/files.py). A model that does not fit one
GPU: generate.backend=vllm generate.tensor_parallel=G, launched as one process.
"""
from __future__ import annotations

from pathlib import Path

from ie_engine.engine import launch, parallel
from ie_engine.engine.config import parse_config
from ie_engine.engine.generate.files import generate_files, read_prompts
from ie_engine.engine.generate.setup import checkpoint_config, generation_model, prompt_tokenizer, resolve_files
from ie_engine.engine.run_config import GenerateConfig

CONFIG = GenerateConfig  # the schema of this recipe's config
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "generate_default.yaml"


def main(argv=None):
    cfg = parse_config(CONFIG, launch.with_default_config(argv, DEFAULT_CONFIG))  # 1. config (checked)
    model_cfg = checkpoint_config(cfg.model.checkpoint)            # 2. the checkpoint exists
    world = launch.start(cfg)                                      # 3. distributed
    try:
        files = resolve_files(cfg.data.files or ["bundled"], cfg.data.cache_dir, world)  # 4. inputs
        tokenizer = prompt_tokenizer(cfg.data.tokenizer, cfg.model.checkpoint, cfg.data.cache_dir, world,
                                     model_cfg.vocab_size)
        prompts = read_prompts(files, tokenizer, cfg.data.max_records, model_cfg.max_seq_len)  # 5. records checked
        model = generation_model(cfg.generate.backend, cfg.model.checkpoint, world, cfg.parallel,  # 6. a full
                                 cfg.model.attn_backend)                                           # copy per rank
        generate_files(cfg.generate, model, tokenizer, files, cfg.output_dir, world,  # 7. generate, write
                       seed=cfg.seed, max_records=cfg.data.max_records, prompts=prompts)
    finally:
        parallel.destroy_distributed()


if __name__ == "__main__":
    launch.run_recipe(main)
