"""Open IE scorer (CaRB / ROBUST): the numbers of ADELIE's scripts/tasks/ROBUST pipeline
(reformat_results_open.py, then src/robust_scorer.py with CaRB's carb.py and the
binary_linient_tuple_match of CaRB's matcher.py).

Gold: ROBUST's JSON file, a list of {"ori_sent", "ori_args": [[predicate, arg1, arg2, ...]],
"paraphrases": [{"sent", "args": [[...]]}]}. ADELIE does not ship it (its
scripts/tasks/ROBUST/data/README.md points to a download link): get it from the ROBUST authors
(Qi et al., 2023, "Preserving Knowledge Invariance: Rethinking Robustness Evaluation of Open
Information Extraction") and pass it as `gold=PATH`. A file whose samples have no paraphrases
is plain CaRB scoring. The prediction records must follow the gold's order: each sample's
original sentence, then its paraphrases.

Predicted tuples (reformat_results_open.get_args): the text between the first and a second
"[Answer]: " (with the space) or the whole output; every match of the greedy `\\((.*)\\)`, per
line, split on "; " into [predicate, arg1, ...]. So two tuples on one line are one tuple.

Per sentence (CaRB compare, all confidences -1, so one threshold):
- match(gold, pred) = [precision, recall] over whitespace tokens, case-sensitive, after
  binarising both to [arg1, "arg2 arg3 ..."]: predicate tokens must overlap (a predicted "be"
  also matches a gold form of "be"), else [0, 0]; a prediction missing arg1 or arg2 where the
  gold has it scores [0, 0]; tokens are matched one-to-one per slot. When the gold predicate
  contains (as a substring) said/told/added/adds/says, the best of the straight and the
  args-swapped match is taken (list comparison: precision first).
- recall = sum over gold tuples of the best recall over predictions / #gold (not one-to-one);
  precision = greedy one-to-one matching by best precision, summed / #predictions.
- F1 = 2PR/(P+R); AUC = area under [(R, P), (0, 1)]. P, R, F1 and AUC are rounded to 3 digits.
- No prediction: (AUC, P, R, F1) = 0. Predictions but no gold tuple: P = 1, R = F1 = AUC = 0.
Then (robust_scorer.main): CaRB P, R, AUC = means over samples of the original sentence's
scores, CaRB F1 = F1 of those means; robust = the same over each sample's worst sentence by F1
(the first on ties, the original sentence first). Samples or sentences with the same text
collapse into one (ADELIE keys them by text), and an F1 of 0/0 is 0 here (nan in ADELIE).
No corrected variant: these are CaRB's documented rules, kept as they are.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

MARKER = "[Answer]: "
TUPLE = re.compile(r"\((.*)\)")
BE_FORMS = ("be", "is", "am", "are", "was", "were", "been", "being")
SAID_VERBS = ("said", "told", "added", "adds", "says")


def parse_tuples(output: str) -> list[list[str]]:
    parts = output.split(MARKER)
    text = parts[1] if len(parts) > 1 else output
    return [found.split("; ") for found in TUPLE.findall(text)]


def _overlap(gold_words: list[str], pred_words: list[str]) -> int:
    """One-to-one token matches; removes the matched words from pred_words."""
    matched = 0
    for word in gold_words:
        if word in pred_words:
            matched += 1
            pred_words.remove(word)
    return matched


def _lenient(gold_pred: str, gold_args: list[str], pred_pred: str, pred_args: list[str]) -> list[float]:
    pred_words, gold_words = pred_pred.split(), gold_pred.split()
    prec, rec = [0, len(pred_words)], [0, len(gold_words)]
    matched = _overlap(gold_words, pred_words)
    if "be" in pred_words and any(form in gold_words for form in BE_FORMS):
        matched += 1
        pred_words.remove("be")
    if matched == 0:
        return [0, 0]
    prec[0] += matched
    rec[0] += matched
    for i, gold_arg in enumerate(gold_args):
        gold_words = gold_arg.split()
        rec[1] += len(gold_words)
        if len(pred_args) <= i:
            if i < 2:
                return [0, 0]
            continue
        pred_words = pred_args[i].split()
        prec[1] += len(pred_words)
        matched = _overlap(gold_words, pred_words)
        prec[0] += matched
        rec[0] += matched
    return [prec[0] / prec[1] if prec[1] else 0, rec[0] / rec[1] if rec[1] else 0]


def match(gold: list[str], pred: list[str]) -> list[float]:
    """CaRB's binary_linient_tuple_match: [precision, recall] of one predicted tuple."""
    gold_pred, gold_args = (gold[0], gold[1:]) if gold else ("", [])
    pred_pred, pred_args = (pred[0], pred[1:]) if pred else ("", [])

    def binary(args):
        return [args[0], " ".join(args[1:])] if len(args) >= 2 else args
    straight = _lenient(gold_pred, binary(gold_args), pred_pred, binary(pred_args))
    if not any(verb in gold_pred for verb in SAID_VERBS):
        return straight
    swapped = [" ".join(pred_args[1:]), pred_args[0]] if len(pred_args) >= 2 else pred_args
    return max(straight, _lenient(gold_pred, binary(gold_args), pred_pred, swapped))


def score_sentence(gold: list[list[str]], pred: list[list[str]]) -> tuple[float, float, float, float]:
    """(AUC, P, R, F1) of one sentence, rounded to 3 digits as CaRB returns them."""
    if not pred:
        return 0.0, 0.0, 0.0, 0.0
    if not gold:
        return 0.0, 1.0, 0.0, 0.0
    scores = [[match(g, p) for p in pred] for g in gold]
    recall_sum = sum(max(s[1] for s in row) for row in scores)
    precision_sum, rows, cols = 0.0, [], []
    for _ in range(min(len(gold), len(pred))):
        best, bi, bj = -1, -1, -1  # below 0 so that a precision of 0 is still picked
        for i, row in enumerate(scores):
            if i in rows:
                continue
            for j, s in enumerate(row):
                if j not in cols and s[0] > best:
                    best, bi, bj = s[0], i, j
        rows.append(bi)
        cols.append(bj)
        precision_sum += scores[bi][bj][0]
    p, r = np.float64(precision_sum) / len(pred), np.float64(recall_sum) / len(gold)
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    # sklearn.metrics.auc([r, 0], [p, 1]): trapezoid from (r, p) back to (0, 1), sign flipped
    auc = -((0.0 - r) * (1.0 + p) / 2.0)
    auc, p, r, f1 = np.round([auc, p, r, f1], 3)
    return float(auc), float(p), float(r), float(f1)


def load_gold(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of ROBUST samples")
    for i, sample in enumerate(data):
        if not isinstance(sample, dict) or not {"ori_sent", "ori_args", "paraphrases"} <= sample.keys():
            raise ValueError(f"{path}[item {i}]: a ROBUST sample needs ori_sent, ori_args, paraphrases")
        for para in sample["paraphrases"]:
            if not isinstance(para, dict) or not {"sent", "args"} <= para.keys():
                raise ValueError(f"{path}[item {i}]: each paraphrase needs sent and args")
    return data


def _grouped(data: list[dict], tuples_of) -> dict[str, dict[str, list[list[str]]]]:
    """ori_sent -> {sentence: tuples}, in order; tuples_of(sentence index, gold tuples)."""
    samples, index = {}, 0
    for sample in data:
        sentences = {sample["ori_sent"]: tuples_of(index, sample["ori_args"])}
        index += 1
        for para in sample["paraphrases"]:
            sentences[para["sent"]] = tuples_of(index, para["args"])
            index += 1
        samples[sample["ori_sent"]] = sentences
    return samples


def _f1(p: float, r: float) -> float:
    return float(2 * p * r / (p + r)) if p + r else 0.0


def score(records: list[dict], gold: str | os.PathLike | None = None) -> dict:
    if gold is None:
        raise ValueError("openie scoring needs gold=PATH: ROBUST's gold JSON, from its authors")
    data = load_gold(gold)
    n_sentences = sum(1 + len(s["paraphrases"]) for s in data)
    if len(records) != n_sentences:
        raise ValueError(f"openie: {len(records)} predictions for {n_sentences} sentences in {gold}")
    gold_samples = _grouped(data, lambda i, args: [list(t) for t in args])
    pred_samples = _grouped(data, lambda i, args: parse_tuples(records[i]["output"]))
    per_sample = []
    for ori_sent, sentences in pred_samples.items():
        scores = [score_sentence(gold_samples[ori_sent][s], pred) for s, pred in sentences.items()]
        per_sample.append(scores)  # the original sentence is always the first key
    carb = np.array([scores[0] for scores in per_sample]).reshape(-1, 4)
    robust = np.array([min(scores, key=lambda s: s[3]) for scores in per_sample]).reshape(-1, 4)
    result = {"task": "openie", "n": len(records), "samples": len(per_sample)}
    for name, table in (("", carb), ("robust_", robust)):
        auc, p, r = (float(table[:, k].mean()) if len(table) else 0.0 for k in range(3))
        result.update({f"{name}precision": p, f"{name}recall": r, f"{name}f1": _f1(p, r), f"{name}auc": auc})
    return result
