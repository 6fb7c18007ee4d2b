"""TokenCache.batch against a per-token Python reference built from the cache's documents.

The reference (`batch_ref`) walks each row document by document with plain loops, straight from
the batch contract in data/cache.py; the vectorised `batch` must give the same tensors for any
row selection (odd sizes, any order, repeats, a single row), SFT and DPO.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ie_engine.bench.bench_prepare import TextSource, synthetic_dpo, synthetic_sft, write_jsonl
from ie_engine.data.cache import IGNORE_INDEX, TokenCache
from ie_engine.data.prepare import prepare
from ie_engine.data.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    src = TextSource(seed=11, n_types=20_000, n_sentences=4000)
    sft = list(synthetic_sft(70, seed=13, scale=0.1, src=src))
    tok = train_tokenizer([m["content"] for r in sft for m in r["messages"]], 700, d / "tok.model")
    write_jsonl(sft, d / "s.jsonl")
    write_jsonl(synthetic_dpo(60, seed=17, scale=0.1, src=src), d / "p.jsonl")
    return {
        "sft": TokenCache(prepare("sft", [str(d / "s.jsonl")], tok, 509, d / "sft", workers=1,
                                  progress=False)),
        "dpo": TokenCache(prepare("dpo", [str(d / "p.jsonl")], tok, 509, d / "dpo", workers=1,
                                  progress=False)),
    }


def batch_ref(cache: TokenCache, rows) -> dict:
    """The batch contract, one token at a time."""
    T = cache.seq_len
    B = len(rows)
    ids = [[cache.pad_id] * T for _ in range(B)]
    lab = [[IGNORE_INDEX] * T for _ in range(B)]
    pos = [[0] * T for _ in range(B)]
    did = [[-1] * T for _ in range(B)]
    pairs, s = [], 0
    for b, r in enumerate(rows):
        t = 0
        for d in range(cache.row_docs[r], cache.row_docs[r + 1]):
            d_ids, d_mask = cache.document(d)
            if cache.kind == "dpo" and s % 2 == 0:
                pairs.append(int(cache.doc_example[d]))
            for j in range(len(d_ids)):
                ids[b][t] = int(d_ids[j])
                pos[b][t] = j
                did[b][t] = s
                if j + 1 < len(d_ids) and d_mask[j + 1]:
                    lab[b][t] = int(d_ids[j + 1])
                t += 1
            s += 1
        for k in range(T - t):
            pos[b][t + k] = k
    out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(lab),
           "positions": torch.tensor(pos), "doc_ids": torch.tensor(did), "num_docs": s}
    if cache.kind == "dpo":
        out["pair_index"] = torch.tensor(pairs, dtype=torch.int64)
    return out


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_batch_matches_reference(caches, kind):
    cache = caches[kind]
    R = cache.num_rows
    rng = np.random.default_rng(0)
    selections = [[0], [R - 1], rng.permutation(R)[:5].tolist(), [2, 2, 1],
                  rng.integers(0, R, 7).tolist(), list(range(R))]
    for rows in selections:
        got, want = cache.batch(rows), batch_ref(cache, rows)
        assert set(got) == set(want)
        for k, v in want.items():
            if isinstance(v, torch.Tensor):
                assert got[k].dtype == torch.int64, k
                assert torch.equal(got[k], v), (k, rows)
            else:
                assert got[k] == v, k


def test_batch_invariants(caches):
    """What the model relies on, stated directly: ids unique per document, pairs share a row."""
    for kind, cache in caches.items():
        b = cache.batch(list(range(cache.num_rows)))
        did, pos, ids = b["doc_ids"], b["positions"], b["input_ids"]
        S = b["num_docs"]
        assert S == cache.num_docs
        first_seen = did[did >= 0].unique_consecutive()
        assert torch.equal(first_seen, torch.arange(S))  # row-major order, each id one run
        starts = (pos == 0) & (did >= 0)
        assert int(starts.sum()) == S  # positions restart exactly once per document
        assert (ids[did < 0] == cache.pad_id).all()
        if kind == "dpo":
            P = len(b["pair_index"])
            assert S == 2 * P
            row_of = torch.full((S,), -1)
            for s in range(S):
                row_of[s] = int(torch.nonzero(did == s)[0, 0])
            assert torch.equal(row_of[0::2], row_of[1::2])  # chosen and rejected in one row
            assert sorted(b["pair_index"].tolist()) == list(range(cache.num_pairs))


def test_row_tokens_and_stats(caches):
    for cache in caches.values():
        st = cache.stats()
        assert cache.num_rows == st["rows"] == len(cache.row_tokens)
        assert int(cache.row_tokens.sum()) == st["tokens"]
        assert int(sum(cache.document(d)[1].sum() for d in range(cache.num_docs))) == \
            st["target_tokens"]
        assert (cache.row_tokens <= cache.seq_len).all()


def test_format_version_is_checked(caches, tmp_path):
    import shutil
    d = tmp_path / "c"
    shutil.copytree(caches["sft"].path, d)
    meta = json.loads((d / "meta.json").read_text())
    meta["format"] = -1
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format"):
        TokenCache(d)


def test_pickle_reopens_instead_of_copying(caches):
    import pickle
    cache = caches["dpo"]
    blob = pickle.dumps(cache)
    assert len(blob) < 1000  # the path, not the token store
    other = pickle.loads(blob)
    got, want = other.batch([1, 0]), cache.batch([1, 0])
    for k, v in want.items():
        assert torch.equal(got[k], v) if isinstance(v, torch.Tensor) else got[k] == v
