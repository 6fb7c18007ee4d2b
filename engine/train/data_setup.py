"""A run's data, before any model exists: rank 0 builds (or reuses) the token cache from the
configured files (or the bundled defaults), every rank opens it. A data error costs seconds,
not a model allocation. The run's `seed` draws the records of files given with a cap or share
(data/mixture.py) and breaks packing ties, so it is part of the cache's fingerprint.
"""
from __future__ import annotations

from pathlib import Path

from ie_engine.engine import parallel
from ie_engine.engine.config import ConfigError
from ie_engine.engine.run_config import RunConfig


def prepare_data(cfg: RunConfig, world: parallel.World, kind: str, heldout: bool = False):
    """-> (TokenCache, tokenizer path). kind: "sft" or "dpo". heldout: the cache of
    data.eval_files (None when there are none) instead of data.train_files."""
    from ie_engine.data.cache import TokenCache
    from ie_engine.data.mixture import parse_source
    from ie_engine.data.prepare import prepare

    files, tokenizer = list(cfg.data.eval_files if heldout else cfg.data.train_files), cfg.data.tokenizer
    if heldout and not files:
        return None, tokenizer
    if not tokenizer and cfg.model.checkpoint:  # its tokenizer.model, else its tokenizer.json
        from ie_engine.data.tokenizer import TOKENIZER_FILES, find_tokenizer
        try:
            tokenizer = find_tokenizer(cfg.model.checkpoint)
        except FileNotFoundError:
            raise ConfigError(f"model.checkpoint: {cfg.model.checkpoint} has no {' or '.join(TOKENIZER_FILES)}; "
                              "set data.tokenizer") from None
    out = Path(cfg.data.cache_dir) / f"{kind}-seq{cfg.data.seq_len}{'-heldout-' + _files_key(files) if heldout else ''}"
    if world.rank == 0:
        if not files or not tokenizer or files == ["bundled"]:
            from ie_engine.data.bundled import ensure_default_assets
            assets = ensure_default_assets(cfg.data.cache_dir)
            if files == ["bundled"]:  # the bundled held-out set of this kind
                files = [assets["heldout" if kind == "sft" else "heldout_dpo"]]
            files = files or [assets[kind]]
            tokenizer = tokenizer or assets["tokenizer"]
        for f in [parse_source(f).path for f in files] + [tokenizer]:
            if not Path(f).exists():
                raise ConfigError(f"data: {f} does not exist")
        prepare(kind, files, tokenizer, cfg.data.seq_len, str(out), overlong=cfg.data.overlong,
                workers=cfg.data.workers or None, seed=cfg.seed)
    parallel.barrier()
    cache = TokenCache(out)
    if cache.num_rows == 0:
        raise ConfigError(f"data: the token cache {out} has no rows")
    return cache, tokenizer or cache.meta.get("tokenizer", "")


def _files_key(files: list[str]) -> str:
    """A short name for a list of files (held-out caches of different file sets must not mix)."""
    import hashlib
    return hashlib.sha256("\n".join(str(Path(f).resolve()) for f in files).encode()).hexdigest()[:10]
