"""MATRES temporal-relation scorer: the numbers of ADELIE's scripts/tasks/matres/open_eval.py.

The gold (last message, as it is) is "before", "after", "equal", "vague", or "" / "none" for
no relation. The model is asked for "[Answer]: (first event; relation; second event)".

Counting, as ADELIE does (precision / recall / f1 are the "Total" column, micro over the four
labels: the paper's number; `per_class` holds the four columns):
- gold: +1 for the gold's label ("" and "none" add nothing; any other gold is an error here,
  a KeyError in ADELIE).
- A prediction is looked at only if `re.search(r"[Answer](.*?): (.*)", output)` matches and
  its second group holds a run of `[a-zA-Z-]`. `[Answer]` is a character class (one of
  A n s w e r), not the literal marker, so any line with one of those letters somewhere before
  a ": " passes, and a bare answer like "before" (no ": ") is never counted at all.
- Its label text is the middle field of the first `\\((.*); (.*); (.*)\\)` match in the
  lower-cased output (greedy, per line: "(a; before; b) (c; after; d)" on one line yields
  "after").
- Each of the four labels that is a substring of that text is an output, and correct if it is
  also a substring of the gold: "before or after" is two outputs, one of them correct.
ADELIE divides with numpy, so an empty denominator prints nan; here it is 0.0.

Corrected variant (`*_corrected`): the answer is the text after the first literal
"[Answer]:" (else the whole output), lower-cased; its label is the stripped middle field of the
first triple, or the whole answer stripped of spaces and a trailing ";" or "." when there is no
triple; it counts once, and only when it is exactly one of the four labels; correct when equal
to the gold (stripped, lower-cased).
"""
from __future__ import annotations

import re

from .predictions import RecordError, gold_of
from .prf import safe_prf

LABELS = ("before", "after", "equal", "vague")
ANSWER = re.compile(r"[Answer](.*?): (.*)")  # sic: a character class, as in ADELIE
LETTERS = re.compile(r"([a-zA-Z-]+)")
TRIPLE = re.compile(r"\((.*); (.*); (.*)\)")
NONE_GOLDS = ("none", "")


def output_labels(output: str) -> list[str]:
    """The labels ADELIE counts as outputs for one prediction (possibly several, possibly none)."""
    found = ANSWER.search(output)
    if found is None or not LETTERS.findall(found.group(2)):
        return []
    triples = TRIPLE.findall(output.lower())
    if not triples:
        return []
    middle = triples[0][1]
    return [label for label in LABELS if label in middle]


def output_label_corrected(output: str) -> str | None:
    answer = output.split("[Answer]:", 1)[1] if "[Answer]:" in output else output
    answer = answer.lower()
    triples = TRIPLE.findall(answer)
    label = triples[0][1].strip() if triples else answer.strip().rstrip(";.").strip()
    return label if label in LABELS else None


def _prf_table(correct: dict, out: dict, gold: dict) -> dict:
    table = {}
    for name in (*LABELS, "total"):
        c, o, g = ((sum(d.values()) for d in (correct, out, gold)) if name == "total"
                   else (correct[name], out[name], gold[name]))
        p, r, f = safe_prf(c, o, g)
        table[name] = {"precision": p, "recall": r, "f1": f, "gold": g, "predicted": o, "correct": c}
    return table


def score(records: list[dict]) -> dict:
    gold_n, out_n, cor_n = ({k: 0 for k in LABELS} for _ in range(3))
    gold_c, out_c, cor_c = ({k: 0 for k in LABELS} for _ in range(3))
    for index, record in enumerate(records):
        gold = gold_of(record)
        if gold not in NONE_GOLDS:
            if gold not in LABELS:
                raise RecordError(index, f"MATRES gold must be one of {LABELS} or '' / 'none', got {gold!r}")
            gold_n[gold] += 1
        for label in output_labels(record["output"]):
            out_n[label] += 1
            cor_n[label] += label in gold

        gold_norm = gold.strip().lower()
        if gold_norm in LABELS:
            gold_c[gold_norm] += 1
        label = output_label_corrected(record["output"])
        if label is not None:
            out_c[label] += 1
            cor_c[label] += label == gold_norm
    table, table_c = _prf_table(cor_n, out_n, gold_n), _prf_table(cor_c, out_c, gold_c)
    total, total_c = table.pop("total"), table_c.pop("total")
    return {"task": "temporal", "precision": total["precision"], "recall": total["recall"],
            "f1": total["f1"], "n": len(records),
            "gold": total["gold"], "predicted": total["predicted"], "correct": total["correct"],
            "per_class": table,
            "precision_corrected": total_c["precision"], "recall_corrected": total_c["recall"],
            "f1_corrected": total_c["f1"], "per_class_corrected": table_c}
