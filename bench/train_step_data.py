"""bench_train_step's data and models: the synthetic ADELIE-like token caches, the step's rows as
packed and as padded batches, and the models every case trains (ours, ours under FSDP2, and
transformers' on the same weights).
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ie_engine.bench.common import hf_attn_implementation
from ie_engine.engine.model.config import PRESETS as MODEL_PRESETS
from ie_engine.engine.model.config import ModelConfig, RopeScaling
from ie_engine.engine.model.hf_checkpoint import to_transformers
from ie_engine.engine.model.transformer import build_model
from ie_engine.engine.run_config import ParallelConfig

IGNORE = -100
BETA = 0.1  # every DPO case's beta
TOKENIZER_VOCAB = 4096
PAD_MULTIPLE = 256  # CUDA: padded micro-batches are rounded up to this (a few compiled shapes, not one per batch)


@dataclass
class BenchPreset:
    model: ModelConfig
    """Model sizes."""
    seq_len: int
    """Packed row length."""
    rows: int
    """Packed rows per step (SFT and DPO): the step's examples are the documents of these rows."""
    scale: float
    """Length scale of the synthetic conversations (1.0: ADELIE's mostly 100-800 tokens)."""
    n_sft: int = 256
    """Synthetic SFT conversations in the cache the step's rows are drawn from."""
    n_pairs: int = 192
    """Synthetic DPO pairs in the cache."""


PRESETS: dict[str, BenchPreset] = {
    # CPU: the engine's debug model (GQA, 4 layers, dim 256, vocab 4096), fp32.
    "debug": BenchPreset(MODEL_PRESETS["debug"], seq_len=512, rows=8, scale=0.1),
    # CPU, the debug widths with Llama-2's 32000 vocabulary: the head is ~3/4 of the matmul FLOPs.
    "debug-32k": BenchPreset(dataclasses.replace(MODEL_PRESETS["debug"], vocab_size=32000),
                             seq_len=512, rows=8, scale=0.1),
    # CPU, a Llama-3.2-shaped small model: debug's widths with Llama-3's 128,256-id vocabulary,
    # tied head, RoPE theta 500,000 and Llama-3 frequency scaling (the DPO step vs TRL, issue 14).
    "llama3-tiny-128k": BenchPreset(dataclasses.replace(MODEL_PRESETS["debug"], vocab_size=128256, rope_theta=500000.0,
                                                        rope_scaling=RopeScaling(factor=32.0), tie_embeddings=True),
                                    seq_len=512, rows=8, scale=0.1),
    # A tiny model for the pytest-benchmark view (seconds per case on 2 cores).
    "tiny": BenchPreset(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=TOKENIZER_VOCAB,
                                    multiple_of=32, max_seq_len=256), seq_len=256, rows=2, scale=0.15,
                        n_sft=64, n_pairs=48),
    # GPU (bf16): the 1B-class config and 7B-width layer stacks that fit one 80 GB GPU with AdamW.
    "llama2-1b": BenchPreset(MODEL_PRESETS["llama2-1b"], seq_len=2048, rows=8, scale=1.0, n_sft=512, n_pairs=384),
    "llama2-7b-4l": BenchPreset(dataclasses.replace(MODEL_PRESETS["llama2-7b"], n_layers=4), seq_len=2048,
                                rows=4, scale=1.0, n_sft=512, n_pairs=384),
    "llama2-7b-8l": BenchPreset(dataclasses.replace(MODEL_PRESETS["llama2-7b"], n_layers=8), seq_len=2048,
                                rows=4, scale=1.0, n_sft=512, n_pairs=384),
}


# ----------------------------------------------------------------------------- data

def build_caches(preset: BenchPreset, work: str) -> tuple:
    """Synthetic SFT + DPO JSONL, a tokenizer, and their token caches (built once under work)."""
    from ie_engine.bench.bench_prepare import TextSource, synthetic_dpo, synthetic_sft, write_jsonl
    from ie_engine.data.cache import TokenCache
    from ie_engine.data.prepare import prepare
    from ie_engine.data.tokenizer import train_tokenizer

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    def source(draws_seed: int) -> TextSource:  # one "language" (seed 0), fresh text draws per use
        src = TextSource(0, n_types=50_000, n_sentences=20_000)
        src.rnd.seed(draws_seed)
        return src

    tok = work / f"bpe{TOKENIZER_VOCAB}.model"
    if not tok.exists():
        texts = (m["content"] for r in synthetic_sft(3000, 100, 1.0, source(100)) for m in r["messages"])
        train_tokenizer(texts, TOKENIZER_VOCAB, tok)
    sft, dpo = work / f"sft_{preset.n_sft}_s{preset.scale}.jsonl", work / f"dpo_{preset.n_pairs}_s{preset.scale}.jsonl"
    if not sft.exists():  # a fixed function of the seeds, written once (so the caches are reused)
        write_jsonl(synthetic_sft(preset.n_sft, 0, preset.scale, source(0)), sft)
    if not dpo.exists():
        write_jsonl(synthetic_dpo(preset.n_pairs, 1, preset.scale, source(1)), dpo)
    caches = []
    for kind, path in (("sft", sft), ("dpo", dpo)):
        out = prepare(kind, str(path), str(tok), preset.seq_len, str(work / f"cache_{path.stem}_T{preset.seq_len}"),
                      workers=1, progress=False)
        caches.append(TokenCache(out))
    if caches[0].vocab_size > preset.model.vocab_size:
        raise ValueError(f"tokenizer vocab {caches[0].vocab_size} > model vocab {preset.model.vocab_size}")
    return caches


def pick_rows(cache, n: int, seed: int) -> np.ndarray:
    """n distinct rows, seeded: the packer's row order is by fill, not a sample."""
    if cache.num_rows < n:
        raise ValueError(f"{cache.path}: {cache.num_rows} rows, the step needs {n}")
    return np.sort(np.random.default_rng(seed).permutation(cache.num_rows)[:n])


def row_documents(cache, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, target_mask) of every document in these rows, in the order cache.batch numbers them."""
    return [cache.document(d) for r in rows.tolist()
            for d in range(int(cache.row_docs[r]), int(cache.row_docs[r + 1]))]


def padded_batch(docs: list[tuple[np.ndarray, np.ndarray]], pad_id: int, multiple: int = 1) -> dict:
    """One example per row, right-padded to the longest (rounded up to `multiple`). Carries both label conventions:
    labels (ours, pre-shifted: labels[t] = ids[t+1] when t+1 is a target) and hf_labels
    (transformers / TRL: hf_labels[t] = ids[t] when t is a target; they shift inside), plus
    attention_mask, completion_mask (= target mask, TRL's name) and doc_ids (row i -> i, pad -1:
    only for counting tokens and FLOPs)."""
    B, L = len(docs), max(len(ids) for ids, _ in docs)
    L = -(-L // multiple) * multiple
    out = {k: torch.full((B, L), v, dtype=torch.long) for k, v in
           (("input_ids", pad_id), ("labels", IGNORE), ("hf_labels", IGNORE), ("attention_mask", 0),
            ("completion_mask", 0), ("doc_ids", -1))}
    for i, (ids, tgt) in enumerate(docs):
        n = len(ids)
        ids_t, tgt_t = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(tgt)
        lab = torch.full((n,), IGNORE, dtype=torch.long)
        lab[:-1] = torch.where(tgt_t[1:], ids_t[1:], IGNORE)
        out["input_ids"][i, :n] = ids_t
        out["labels"][i, :n] = lab
        out["hf_labels"][i, :n] = torch.where(tgt_t, ids_t, IGNORE)
        out["attention_mask"][i, :n] = 1
        out["completion_mask"][i, :n] = tgt_t.long()
        out["doc_ids"][i, :n] = i
    return out


def real_tokens(batches: list[dict]) -> int:
    return sum(int((b["doc_ids"] >= 0).sum()) for b in batches)


def valid_targets(batches: list[dict]) -> int:
    return sum(int((b["labels"] != IGNORE).sum()) for b in batches)


# ----------------------------------------------------------------------------- models

def build_ours(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int):
    model = build_model(cfg, "meta")
    model.to_empty(device=device)
    model.init_weights(seed)
    model.to(dtype)
    model.init_rope()  # the cast rounded the fp32 RoPE tables
    return model.train()


def build_fsdp(cfg: ModelConfig, device: torch.device, seed: int):
    """The recipes' model: on meta, FSDP2 over a 1-process group (engine/parallel.py, as
    engine/train/model_setup.py builds it), materialised from the same seed as build_ours; bf16
    mixed precision on CUDA, fp32 on CPU."""
    from ie_engine.engine import parallel

    world = parallel.init_distributed(device_type=device.type)
    pcfg = ParallelConfig(mixed_precision="bf16" if device.type == "cuda" else "fp32")
    model = parallel.parallelize(build_model(cfg, "meta"), pcfg, world)
    parallel.materialize(model, world, pcfg, seed)
    return model.train()


def build_hf(model, dtype: torch.dtype, device: torch.device):
    """transformers' LlamaForCausalLM with our model's config and weights (handed over in memory:
    the tensors of the engine's own export, save_hf), SDPA attention (flash-attn 2 on CUDA when
    installed)."""
    return to_transformers(model, dtype, hf_attn_implementation(device)).train()


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
