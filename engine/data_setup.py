"""A run's data, before any model exists: rank 0 builds (or reuses) the token cache from the
configured files (or the bundled defaults), every rank opens it. A data error costs seconds,
not a model allocation.
"""
from __future__ import annotations

from pathlib import Path

from engine import parallel
from engine.config import ConfigError
from engine.run_config import RunConfig


def prepare_data(cfg: RunConfig, world: parallel.World, kind: str):
    """-> (TokenCache, tokenizer path). kind: "sft" or "dpo"."""
    from data.cache import TokenCache
    from data.prepare import prepare

    files, tokenizer = list(cfg.data.train_files), cfg.data.tokenizer
    if not tokenizer and cfg.model.checkpoint:
        tokenizer = str(Path(cfg.model.checkpoint) / "tokenizer.model")
    out = Path(cfg.data.cache_dir) / f"{kind}-seq{cfg.data.seq_len}"
    if world.rank == 0:
        if not files or not tokenizer:
            from data.bundled import ensure_default_assets
            assets = ensure_default_assets(cfg.data.cache_dir)
            files = files or [assets[kind]]
            tokenizer = tokenizer or assets["tokenizer"]
        for f in files + [tokenizer]:
            if not Path(f).exists():
                raise ConfigError(f"data: {f} does not exist")
        prepare(kind, files, tokenizer, cfg.data.seq_len, str(out), overlong=cfg.data.overlong,
                workers=cfg.data.workers or None)
    parallel.barrier()
    cache = TokenCache(out)
    if cache.num_rows == 0:
        raise ConfigError(f"data: the token cache {out} has no rows")
    return cache, tokenizer or cache.meta.get("tokenizer", "")
