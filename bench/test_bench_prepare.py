"""pytest-benchmark view of bench_prepare at a small size (3,000 conversations, seq_len 2048):

    python -m pytest bench/test_bench_prepare.py --benchmark-group-by=group

Times a cold `prepare()` (tokenize in 2 workers, pack, write) and `TokenCache.batch` for one
micro-batch of 8 rows. Before timing, the prepared cache is checked against encode_conversation
on a sample of conversations and the batch against its own input ids, so a fast wrong answer
fails instead of reporting a time.
"""
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ie_engine.bench.bench_prepare import TextSource, synthetic_sft, write_jsonl
from ie_engine.data.cache import TokenCache
from ie_engine.data.prepare import prepare
from ie_engine.data.template import encode_conversation
from ie_engine.data.tokenizer import Tokenizer, train_tokenizer

N, SEQ_LEN = 3000, 2048


@functools.lru_cache(maxsize=None)
def assets() -> tuple[str, str]:
    d = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    src = TextSource(0, n_types=50_000, n_sentences=20_000)
    recs = list(synthetic_sft(N, seed=1, src=src))
    tok = train_tokenizer((m["content"] for r in recs[:1000] for m in r["messages"]), 8000,
                          d / "tok.model")
    return write_jsonl(recs, d / "sft.jsonl"), tok


def _fresh_prepare(path: str, tok: str, out: Path) -> str:
    shutil.rmtree(out, ignore_errors=True)
    return prepare("sft", [path], tok, SEQ_LEN, out, workers=2, progress=False)


def test_bench_prepare(benchmark, tmp_path):
    path, tok = assets()
    cache = TokenCache(_fresh_prepare(path, tok, tmp_path / "c"))
    t = Tokenizer(tok)
    lines = Path(path).read_text().splitlines()
    for i in np.random.default_rng(0).choice(cache.num_examples, 20, replace=False):
        rec = json.loads(lines[cache.example_record[i]])
        ids, mask = encode_conversation(t, rec["messages"], max_len=SEQ_LEN)
        (gids, gmask), = cache.example(int(i))
        np.testing.assert_array_equal(gids, ids)
        np.testing.assert_array_equal(gmask, mask)
    benchmark.group = f"prepare n={N}"
    benchmark.pedantic(_fresh_prepare, args=(path, tok, tmp_path / "c"), rounds=3, iterations=1)


def test_bench_batch(benchmark, tmp_path):
    path, tok = assets()
    cache = TokenCache(_fresh_prepare(path, tok, tmp_path / "c"))
    rows = np.random.default_rng(0).choice(cache.num_rows, 8, replace=False)
    b = cache.batch(rows)
    ids, lab = b["input_ids"], b["labels"]
    keep = lab[:, :-1] != -100
    assert torch.equal(lab[:, :-1][keep], ids[:, 1:][keep])  # labels are next tokens
    assert int(keep.sum()) > 0
    benchmark.group = "TokenCache.batch 8 x 2048"
    benchmark(cache.batch, rows)
