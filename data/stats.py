"""stats.json of a token cache (data/prepare.py writes it beside the cache): totals, and the same
counts per source dataset and per input file, deterministic (no timings), so two builds of the
same inputs agree.
"""
from __future__ import annotations

import os

import numpy as np

from ie_engine.data.encode import DROPPED_NO_TARGET, DROPPED_OVERLONG, TRUNCATED


def build_stats(kind, seq_len, overlong, seed, tok, fp, names, status, full_len, rec_dataset,
                ex_len, ex_tgt, R, rec_input, available) -> dict:
    """stats.json: deterministic (no timings), totals and the same counts per source dataset
    ("per_dataset", by the records' dataset name) and per input ("per_input", in input order:
    path, take, file_records = the records the file holds, then the counts of those drawn).

    records: read (of an input with a take: drawn); examples: kept (DPO: pairs); tokens /
    target_tokens: in the cache (DPO: both sequences); truncated: kept but cut; dropped =
    dropped_overlong + dropped_no_target; max_example_tokens: longest record before any cut.
    rec_input: each record's input index; available: each input's record count.
    """
    ex_dataset = rec_dataset[status <= TRUNCATED]
    ex_input = rec_input[status <= TRUNCATED]
    N = int(ex_len.sum())

    def counts(sel_rec: np.ndarray, sel_ex: np.ndarray) -> dict:
        st = status[sel_rec]
        return {
            "records": int(sel_rec.sum()),
            "examples": int(sel_ex.sum()),
            "tokens": int(ex_len[sel_ex].sum()),
            "target_tokens": int(ex_tgt[sel_ex].sum()),
            "truncated": int((st == TRUNCATED).sum()),
            "dropped": int((st >= DROPPED_OVERLONG).sum()),
            "dropped_overlong": int((st == DROPPED_OVERLONG).sum()),
            "dropped_no_target": int((st == DROPPED_NO_TARGET).sum()),
            "max_example_tokens": int(full_len[sel_rec].max()) if sel_rec.any() else 0,
        }

    return {
        "kind": kind,
        "seq_len": seq_len,
        "overlong": overlong,
        "seed": seed,
        **counts(np.ones(len(status), bool), np.ones(len(ex_dataset), bool)),
        "rows": R,
        "pad_fraction": (1.0 - N / (R * seq_len)) if R else 0.0,
        "examples_per_row": (len(ex_len) / R) if R else 0.0,
        "tokenizer": {"path": os.path.abspath(tok.path), "sha256": fp["tokenizer_sha256"],
                      "vocab_size": tok.vocab_size},
        "inputs": [f["path"] for f in fp["inputs"]],
        "per_dataset": {name: counts(rec_dataset == i, ex_dataset == i)
                        for i, name in enumerate(names)},
        "per_input": [{"path": f["path"], "take": f["take"], "file_records": int(n),
                       **counts(rec_input == i, ex_input == i)}
                      for i, (f, n) in enumerate(zip(fp["inputs"], available))],
    }
