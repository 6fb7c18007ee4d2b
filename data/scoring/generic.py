"""Item-set micro P/R/F1 for the bundled default's IE sets (`bundled-ner`, `bundled-re`,
`bundled-ed`), whose types are not ADELIE's (Few-NERD's 67, SemEval's 18, RichERE's 38), so
ADELIE's type-filtering scorers would drop every item.

Answer: the text after the first "[Answer]:" up to any second one (the whole output without
it). Items: every "(head; relation; tail)" triple when the gold has one, else the
"span: type" pieces split on ";" (whitespace around each part stripped, case kept); the
"No entities found" / "No events found" / "Not related" answers are no items. Each record's
items are a set; matches are exact. Micro-averaged over the file, 0 on an empty denominator.
"""
from __future__ import annotations

import re

from .predictions import gold_of
from .prf import safe_prf

_TRIPLE = re.compile(r"\(([^;()]*);([^;()]*);([^;()]*)\)")
_NONE = ("no entities found", "no events found")


def answer(text: str) -> str:
    parts = str(text).split("[Answer]:")
    return parts[1] if len(parts) > 1 else parts[0]


def items(text: str, triples: bool) -> set:
    body = answer(text).strip()
    if triples:
        found = {tuple(x.strip() for x in m) for m in _TRIPLE.findall(body)}
        return {t for t in found if t[1].lower() != "not related"}
    if body.lower().rstrip(".") in _NONE:
        return set()
    out = set()
    for piece in body.split(";"):
        span, sep, kind = piece.rpartition(":")
        if sep and span.strip() and kind.strip():
            out.add((span.strip(), kind.strip()))
    return out


def score(records: list[dict]) -> dict:
    correct = n_pred = n_gold = exact = 0
    for record in records:
        gold_text = gold_of(record)
        triples = bool(_TRIPLE.search(answer(gold_text)))
        gold, pred = items(gold_text, triples), items(record["output"], triples)
        correct, n_pred, n_gold = correct + len(gold & pred), n_pred + len(pred), n_gold + len(gold)
        exact += gold == pred
    p, r, f = safe_prf(correct, n_pred, n_gold)
    return {"task": "generic", "precision": p, "recall": r, "f1": f, "n": len(records),
            "exact_match": exact / len(records) if records else 0.0,
            "counts": {"correct": correct, "pred": n_pred, "gold": n_gold}}
