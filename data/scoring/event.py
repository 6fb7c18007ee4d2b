"""RichERE event detection and argument extraction scorers: the numbers of ADELIE's
scripts/tasks/richere-ed/open_eval.py (ED) and scripts/tasks/richere-eae/open_evaluation.py
(EAE).

Answers are "trigger: type; trigger: type" (ED) or "argument: role; ..." (EAE). All whitespace
is removed from both sides (so "New York" becomes "NewYork" on both), then the text is split on
";". ED is case-sensitive; EAE lower-cases both sides. The prediction is the text between the
first and a second "[Answer]:" when the output holds that marker, else the whole output.
- gold: every non-empty ";"-piece, as it is (no type check).
- prediction: pieces that contain ":" and not the substring "NA", and whose second
  ":"-field is one of the 38 ED types / 26 EAE roles; a piece is kept whole ("a:b:c" with a
  valid b stays "a:b:c").
- tp = |gold & prediction| per record; P = tp/(n_pred+1e-10), R = tp/(n_gold+1e-10),
  F = 2PR/(P+R+1e-10) (see prf.eps_prf).
Quirks reproduced: the "NA" test is a substring test on the whole piece, so in ED a trigger
containing "NA" ("NATO:attack") is dropped, while in EAE (lower-cased) it never fires; gold
pieces are not checked, so a gold "NA" or "none" marker for "no event" counts as a gold item
that can never be matched.

Corrected variant (`*_corrected`): the gold is parsed with the same rule as the prediction,
and the NA test looks at the type field only (a valid type is never NA); safe_prf.
"""
from __future__ import annotations

from .predictions import gold_of
from .prf import eps_prf, safe_prf

ED_TYPES = frozenset(
    "endposition transfermoney fine attack die startposition convict chargeindict demonstrate "
    "transaction sentence pardon releaseparole transferownership transportartifact arrestjail "
    "broadcast contact divorce execute trialhearing meet sue transportperson beborn marry "
    "injure correspondence elect nominate acquit startorg extradite endorg appeal "
    "declarebankruptcy mergeorg artifact".split())
EAE_ROLES = frozenset(
    "entity person position place giver recipient money time attacker target victim defendant "
    "crime agent sentence thing artifact origin audience prosecutor plaintiff destination "
    "instrument adjudicator org beneficiary".split())
MARKER = "[Answer]:"


def _squash(text: str) -> str:
    return "".join(text.split())


def gold_items(gold: str, lower: bool) -> set[str]:
    text = gold.strip().lower() if lower else gold.strip()
    return {piece for piece in _squash(text).split(";") if piece}


def pred_items(output: str, types: frozenset, lower: bool, na_substring: bool = True) -> set[str]:
    text = output.split(MARKER)[1].strip() if MARKER in output else output
    text = _squash(text.lower() if lower else text)
    items = set()
    for piece in text.split(";"):
        if not piece or ":" not in piece or (na_substring and "NA" in piece):
            continue
        if piece.split(":")[1] in types:
            items.add(piece)
    return items


def _score(records: list[dict], task: str, types: frozenset, lower: bool) -> dict:
    tp = n_pred = n_gold = tp_c = n_gold_c = n_pred_c = 0
    for record in records:
        gold = gold_items(gold_of(record), lower)
        pred = pred_items(record["output"], types, lower)
        tp, n_pred, n_gold = tp + len(gold & pred), n_pred + len(pred), n_gold + len(gold)
        # Corrected: one parse for both sides; the valid-type test already excludes NA.
        gold_c = pred_items(gold_of(record), types, lower, na_substring=False)
        pred_c = pred_items(record["output"], types, lower, na_substring=False)
        tp_c, n_pred_c, n_gold_c = tp_c + len(gold_c & pred_c), n_pred_c + len(pred_c), n_gold_c + len(gold_c)
    p, r, f = eps_prf(tp, n_pred, n_gold)
    pc, rc, fc = safe_prf(tp_c, n_pred_c, n_gold_c)
    return {"task": task, "precision": p, "recall": r, "f1": f, "n": len(records),
            "tp": tp, "n_pred": n_pred, "n_gold": n_gold,
            "precision_corrected": pc, "recall_corrected": rc, "f1_corrected": fc,
            "tp_corrected": tp_c, "n_pred_corrected": n_pred_c, "n_gold_corrected": n_gold_c}


def score_ed(records: list[dict]) -> dict:
    return _score(records, "ed", ED_TYPES, lower=False)


def score_eae(records: list[dict]) -> dict:
    return _score(records, "eae", EAE_ROLES, lower=True)
