"""Few-NERD NER scorer: the numbers of ADELIE's scripts/tasks/fewnerd/open_evaluate.py.

An answer is "entity: type; entity: type; ...". Both sides are lower-cased (the gold after
strip()); the prediction is the text between the first and a second "[Answer]:" when the
output holds that marker (case-sensitive), else the whole output. Each ";"-piece that splits
on ":" into exactly two parts is an (entity, type) with the entity stripped and the type
stripped and one trailing "." removed; it is kept when the type is one of Few-NERD's 67 labels
written with "_" for "-". Entities go into a dict, entity -> type. A gold entity is correct
when the prediction maps the same entity string to the same type. Micro P/R/F1 over the file,
0 on an empty denominator.

Quirks reproduced in precision / recall / f1 (ADELIE's numbers):
- The label list keeps the capitals of `location_GPE` (and `O`) but is compared with
  lower-cased text, so no GPE entity is ever scored, in gold or prediction: the denominators
  are short by every GPE entity (Few-NERD's most frequent fine type).
- One type per entity string: "Dutch: other_language; Dutch: location_GPE" is one entity, the
  last type wins.
- A piece with a ":" inside the entity ("12:30: ...") has three parts and is dropped.
Corrected variant (`precision_corrected`, `recall_corrected`, `f1_corrected` and `*_corrected`
counts): types are compared case-insensitively, so GPE entities count (`O`, the non-entity
tag, still does not), and answers are sets of (entity, type) pairs, so an entity string with
two types is two entities.
"""
from __future__ import annotations

from .predictions import gold_of
from .prf import safe_prf

_FINE_TYPES = {
    "art": "broadcastprogram film music other painting writtenart",
    "building": "airport hospital hotel library other restaurant sportsfacility theater",
    "event": "attack/battle/war/militaryconflict disaster election other protest sportsevent",
    "location": "bodiesofwater GPE island mountain other park road/railway/highway/transit",
    "organization": "company education government/governmentagency media/newspaper other "
                    "politicalparty religion showorganization sportsleague sportsteam",
    "other": "astronomything award biologything chemicalthing currency disease "
             "educationaldegree god language law livingthing medical",
    "person": "actor artist/author athlete director other politician scholar soldier",
    "product": "airplane car food game other ship software train weapon",
}
# ADELIE's list, capitals included: 66 coarse_fine types plus the non-entity tag "O".
TYPES = frozenset([f"{coarse}_{fine}" for coarse, fines in _FINE_TYPES.items()
                   for fine in fines.split()] + ["O"])
TYPES_LOWER = frozenset(t.lower() for t in TYPES) - {"o"}

MARKER = "[Answer]:"


def answer_text(output: str) -> str:
    """The lower-cased answer part of a model output, as ADELIE cuts it."""
    if MARKER in output:
        return output.strip().split(MARKER)[1].strip().lower()
    return output.lower()


def _pairs(answer: str, types: frozenset) -> list[tuple[str, str]]:
    pairs = []
    for piece in answer.split(";"):
        parts = piece.split(":")
        if len(parts) != 2:
            continue
        entity, etype = parts[0].strip().lower(), parts[1].strip().removesuffix(".")
        if etype in types:
            pairs.append((entity, etype))
    return pairs


def entities(answer: str) -> dict[str, str]:
    """ADELIE's entity -> type dict (exact-case type check; a repeated entity keeps its last type)."""
    return dict(_pairs(answer, TYPES))


def entities_corrected(answer: str) -> set[tuple[str, str]]:
    return set(_pairs(answer.lower(), TYPES_LOWER))


def score(records: list[dict]) -> dict:
    gold_n = pred_n = correct = 0
    gold_c = pred_c = correct_c = 0
    for record in records:
        gold_text = str(gold_of(record)).strip().lower()
        pred_text = answer_text(record["output"])
        gold, pred = entities(gold_text), entities(pred_text)
        gold_n, pred_n = gold_n + len(gold), pred_n + len(pred)
        correct += sum(1 for ent, etype in gold.items() if pred.get(ent) == etype)
        gold_s, pred_s = entities_corrected(gold_text), entities_corrected(pred_text)
        gold_c, pred_c = gold_c + len(gold_s), pred_c + len(pred_s)
        correct_c += len(gold_s & pred_s)
    p, r, f = safe_prf(correct, pred_n, gold_n)
    pc, rc, fc = safe_prf(correct_c, pred_c, gold_c)
    return {"task": "ner", "precision": p, "recall": r, "f1": f, "n": len(records),
            "gold": gold_n, "predicted": pred_n, "correct": correct,
            "precision_corrected": pc, "recall_corrected": rc, "f1_corrected": fc,
            "gold_corrected": gold_c, "predicted_corrected": pred_c, "correct_corrected": correct_c}
