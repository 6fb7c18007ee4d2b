"""Records -> token documents: encode with the chat template and apply the overlong policy.

`encode_records(tok, kind, seq_len, overlong, dtype, items)` turns a list of records (SFT: a
message list; DPO: a (chosen, rejected) pair of message lists, as data/formats.py reads them)
into the documents a token cache stores, plus what happened to each record (`status`: KEPT,
TRUNCATED, DROPPED_OVERLONG, DROPPED_NO_TARGET). It is a pure function of its arguments, so
data/prepare.py can run it on chunks in worker processes and get the same bytes for any number
of workers.

Overlong examples (more than seq_len tokens; a DPO pair counts len(chosen) + len(rejected),
since both sequences go in the same row):
- `drop`: dropped and counted (DROPPED_OVERLONG).
- `truncate`, SFT: keep the first seq_len tokens (what encode_conversation(max_len=seq_len)
  gives). A conversation left with no trained target is dropped (DROPPED_NO_TARGET).
- `truncate`, DPO: the responses are never cut (a cut response is no longer the answer that was
  preferred); the shared prompt loses tokens from its left, after BOS, until the pair fits. The
  prompt keeps at least MIN_PROMPT_TOKENS tokens (fewer no longer say what was asked); a pair
  whose two responses do not fit next to that is dropped (DROPPED_OVERLONG). The "prompt" is
  everything before the final assistant turn's content, identical in chosen and rejected.
"""
from __future__ import annotations

import numpy as np

from ie_engine.data.template import encode_conversation, encode_pair
from ie_engine.data.tokenizer import Tokenizer

MIN_PROMPT_TOKENS = 16

# per-record outcome codes (data/prepare.py turns them into stats)
KEPT, TRUNCATED, DROPPED_OVERLONG, DROPPED_NO_TARGET = 0, 1, 2, 3


def _final_run_start(mask: np.ndarray) -> int:
    """Index where the last run of targets (the final assistant content + EOS) starts."""
    last = len(mask) - 1 - int(np.argmax(mask[::-1]))
    before = np.flatnonzero(~mask[:last])
    return int(before[-1]) + 1 if len(before) else 0


def truncate_pair(tok: Tokenizer, c: np.ndarray, mc: np.ndarray, r: np.ndarray, mr: np.ndarray,
                  seq_len: int):
    """Cut the shared prompt from the left (after BOS) so len(c) + len(r) <= seq_len.

    Returns the cut (c, mc, r, mr), or None when even a MIN_PROMPT_TOKENS prompt does not fit.
    """
    if not (mc.any() and mr.any()):
        return None
    p = min(_final_run_start(mc), _final_run_start(mr))  # equal when the prompts are shared
    a, b = len(c) - p, len(r) - p                         # response tokens, never cut
    keep = (seq_len - a - b) // 2                         # prompt tokens each sequence keeps
    if keep < min(p, MIN_PROMPT_TOKENS) or keep < 1:
        return None
    lead = 1 if c[0] == tok.bos_id else 0                 # BOS stays in front
    cut = p - keep
    sel_c = np.r_[0:lead, lead + cut:len(c)]
    sel_r = np.r_[0:lead, lead + cut:len(r)]
    return c[sel_c], mc[sel_c], r[sel_r], mr[sel_r]


def encode_records(tok: Tokenizer, kind: str, seq_len: int, overlong: str, dtype: np.dtype,
                   items: list) -> tuple[np.ndarray, ...]:
    """Encode records -> (ids, mask, doc_lens, doc_tgt, status, full_len).

    ids (N,) dtype / mask (N,) bool: the kept documents concatenated in record order (DPO:
    chosen then rejected per pair); doc_lens / doc_tgt (D,) int64: tokens / target tokens per
    kept document; status (len(items),) int8 and full_len (len(items),) int64: outcome and
    untruncated length (DPO: both sequences) per record.
    """
    ids_out, mask_out, doc_lens, doc_tgt = [], [], [], []
    status = np.zeros(len(items), dtype=np.int8)
    full_len = np.zeros(len(items), dtype=np.int64)
    for i, item in enumerate(items):
        if kind == "sft":
            ids, mask = encode_conversation(tok, item)
            full_len[i] = len(ids)
            if len(ids) > seq_len:
                if overlong == "drop":
                    status[i] = DROPPED_OVERLONG
                    continue
                ids, mask = ids[:seq_len], mask[:seq_len]
                status[i] = TRUNCATED
            if not mask.any():
                status[i] = DROPPED_NO_TARGET
                continue
            docs = [(ids, mask)]
        else:
            (c, mc), (r, mr) = encode_pair(tok, *item)
            full_len[i] = len(c) + len(r)
            if len(c) + len(r) > seq_len:
                cut = None if overlong == "drop" else truncate_pair(tok, c, mc, r, mr, seq_len)
                if cut is None:
                    status[i] = DROPPED_OVERLONG
                    continue
                c, mc, r, mr = cut
                status[i] = TRUNCATED
            if not (mc.any() and mr.any()):
                status[i] = DROPPED_NO_TARGET
                continue
            docs = [(c, mc), (r, mr)]
        for ids, mask in docs:
            ids_out.append(ids)
            mask_out.append(mask)
            doc_lens.append(len(ids))
            doc_tgt.append(int(mask.sum()))
    cat = lambda xs, dt: np.concatenate(xs).astype(dt, copy=False) if xs else np.zeros(0, dt)  # noqa: E731
    return (cat(ids_out, dtype), cat(mask_out, bool), np.asarray(doc_lens, dtype=np.int64),
            np.asarray(doc_tgt, dtype=np.int64), status, full_len)
