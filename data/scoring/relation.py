"""SemEval-2010 relation classification scorer: the numbers of ADELIE's
scripts/tasks/semeval/open_evaluate.py.

An answer is "(head; relation; tail)" with relations written "x and y" ("whole and component"),
18 labels: both orders of SemEval's 9 relations. Both sides are lower-cased; the prediction is
the text between the first and a second "[Answer]:" when the output holds that marker, else
the whole output (stripped). Triples are every match of the greedy regex
`\\((.*); (.*); (.*)\\)`, per line (no DOTALL), de-duplicated. A gold of "" or
"[answer]: na" has no triple.

Counting, per record, as ADELIE does (precision / recall / f1):
- tp: +1 for each gold triple that is predicted as it is or as its mirror: (tail; "y and x";
  head) for relation "x and y" states the same fact.
- n_pred: only predicted triples whose relation is one of the 18 labels count, and, when the
  record has a gold triple, only those whose head and tail are the first gold triple's: +1
  for (head, tail) and +1 for (tail, head), so a triple whose head equals its tail counts twice.
  With no gold triple, every valid-label prediction counts.
- n_gold: the gold triples are added only when some prediction was counted in n_pred or
  nothing at all was predicted. So an answer with a wrong entity pair or a label outside the
  18 (e.g. "not related") removes that record from recall's denominator: recall is inflated.
- P = tp/(n_pred+1e-10), R = tp/(n_gold+1e-10), F = 2PR/(P+R+1e-10) (see prf.eps_prf).
Where the gold holds several different triples, ADELIE's "first gold triple" is the first of a
Python set (its order changes with PYTHONHASHSEED); here it is the first in text order.
ADELIE crashes on a gold relation without " and " (no mirror); here it simply has no mirror.

Corrected variant (`*_corrected`): a triple and its mirror are one fact; n_gold counts every
gold fact, n_pred every predicted fact with one of the 18 labels (a label outside them means
"no relation"), tp the gold facts predicted; safe_prf, no 1e-10 terms.
"""
from __future__ import annotations

import re

from .predictions import RecordError, gold_of
from .prf import eps_prf, safe_prf

_PAIRS = ("component whole", "instrument agency", "member collection", "cause effect",
          "entity destination", "content container", "message topic", "product producer",
          "entity origin")
RELATIONS = frozenset(f"{a} and {b}" for pair in _PAIRS for a, b in [pair.split(), pair.split()[::-1]])

TRIPLE = re.compile(r"\((.*); (.*); (.*)\)")
MARKER = "[Answer]:"


def triples(text: str) -> list[tuple[str, str, str]]:
    """Distinct (head, relation, tail) matches in text order."""
    return list(dict.fromkeys(TRIPLE.findall(text)))


def mirror(triple: tuple[str, str, str]) -> tuple[str, str, str] | None:
    head, relation, tail = triple
    parts = relation.split(" and ")
    if len(parts) < 2:
        return None
    # ADELIE keeps only the two first " and "-pieces of the relation; so do we.
    return (tail, f"{parts[1]} and {parts[0]}", head)


def _canonical(triple: tuple[str, str, str]) -> tuple[str, str, str]:
    flipped = mirror(triple)
    return min(triple, flipped) if flipped else triple


def answer_text(output: str) -> str:
    if MARKER in output:
        return output.split(MARKER)[1].strip().lower()
    return output.strip().lower()


def gold_triples(gold: str, index: int) -> list[tuple[str, str, str]]:
    text = gold.strip().lower()
    if text in ("", "[answer]: na"):
        return []
    found = triples(text)
    if not found:
        raise RecordError(index, f"gold answer {gold!r} has no (head; relation; tail) triple")
    return found


def score(records: list[dict]) -> dict:
    tp = n_pred = n_gold = 0
    tp_c = n_pred_c = n_gold_c = 0
    for index, record in enumerate(records):
        gold = gold_triples(gold_of(record), index)
        pred = triples(answer_text(record["output"]))

        tp += sum(1 for g in gold if g in pred or mirror(g) in pred)
        counted = False
        for head, relation, tail in pred:
            if relation not in RELATIONS:
                continue
            if not gold:
                n_pred, counted = n_pred + 1, True
                continue
            first = gold[0]
            # Two independent tests, as in ADELIE: head == tail passes both.
            if (head, tail) == (first[0], first[2]):
                n_pred, counted = n_pred + 1, True
            if (tail, head) == (first[0], first[2]):
                n_pred, counted = n_pred + 1, True
        if counted or not pred:
            n_gold += len(gold)

        gold_facts = {_canonical(g) for g in gold}
        pred_facts = {_canonical(t) for t in pred if t[1] in RELATIONS}
        tp_c += len(gold_facts & pred_facts)
        n_pred_c, n_gold_c = n_pred_c + len(pred_facts), n_gold_c + len(gold_facts)
    p, r, f = eps_prf(tp, n_pred, n_gold)
    pc, rc, fc = safe_prf(tp_c, n_pred_c, n_gold_c)
    return {"task": "relation", "precision": p, "recall": r, "f1": f, "n": len(records),
            "tp": tp, "n_pred": n_pred, "n_gold": n_gold,
            "precision_corrected": pc, "recall_corrected": rc, "f1_corrected": fc,
            "tp_corrected": tp_c, "n_pred_corrected": n_pred_c, "n_gold_corrected": n_gold_c}
