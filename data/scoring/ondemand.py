"""On-demand IE scorer (markdown tables): the numbers of ADELIE's
scripts/tasks/ondemandie/evaluation/rougel_for_content.py (content) and sim_for_header.py
(header), fed as o_generate_evaluatefile.py feeds them (gold = last message, stripped and
lower-cased; output as generated).

Content score (`content_rougeLsum`, 0-100, the paper's number): the table is the text from the
first "|" to the end (trailing prose included); the cell strings "| |", "|  |", "|   |", "|-|",
"| - |", "| Not specified |", "| not specified |", "| Not Specified |", "| None |",
"| none |" become "| N/A |" by successive str.replace; score = ROUGE-Lsum F-measure (the
rouge-score library, as the `evaluate` package calls it: default tokenizer, no stemming, rows
as sentences) x 100, averaged over items. No "|" at all gives "" and a score of 0.
`f1` is content_rougeLsum / 100 so that every task's f1 is a fraction; `precision` and
`recall` are the item-averaged ROUGE-Lsum precision and recall (ADELIE reports neither).
Quirks reproduced: str.replace does not overlap, so in a run of empty cells "| | |" only every
other one becomes N/A; the output is not lower-cased, so "| NONE |" or "| NOT SPECIFIED |" stay
as they are while the (lower-cased) gold's do become N/A, and gold-as-prediction can score
below 100. Corrected variant `content_rougeLsum_corrected` (and `f1_corrected`): the table ends
at the last "|", and every cell of both sides that is empty, "-", "not specified" or "none" (any
case) becomes N/A.

Header score: header cells are the first line of the table (first to last "|", both sides
lower-cased, same replacements minus the capitalised ones), stripped of "|" and spaces, split
on " | ". ADELIE embeds them with sentence-transformers' all-MiniLM-L6-v2 and sums, over
items, the best cosine similarity of each predicted cell to a gold cell (precision) and of each
gold cell to a predicted cell (recall), divided by the total cell counts. That needs the model:
pass `sim_model=PATH` to a local copy (nothing is ever downloaded), giving
`header_sim_precision/recall/f1` (0-100, as ADELIE prints them; cosine in numpy from float32
embeddings, so it may differ from ADELIE's torch numbers around the 6th digit). Quirk
reproduced there: a side with no "|" is the string "" in ADELIE, which adds the similarity of an
empty string to the numerator but 0 cells to the denominator; `header_sim_f1_corrected` counts
such a side as no cells. Without a model the scorer reports `header_exact_precision/recall/f1`
(0-100) instead: the same formula with similarity 1 for identical cells and 0 otherwise. It is
not ADELIE's number and is named so. An empty denominator gives 0 here (inf or nan in ADELIE).
"""
from __future__ import annotations

import os

import numpy as np

from .predictions import gold_of

_REPLACEMENTS = ("| |", "|  |", "|   |", "|-|", "| - |", "| Not specified |", "| not specified |",
                 "| Not Specified |", "| None |", "| none |")
_HEADER_REPLACEMENTS = ("| |", "|  |", "|   |", "|-|", "| - |", "| not specified |", "| none |")
_EMPTY_CELLS = ("", "-", "not specified", "none")


def _replace(table: str, targets: tuple[str, ...]) -> str:
    for target in targets:
        table = table.replace(target, "| N/A |")
    return table


def content_table(text: str) -> str:
    first = text.find("|")
    return "" if first == -1 else _replace(text[first:], _REPLACEMENTS)


def content_table_corrected(text: str) -> str:
    first, last = text.find("|"), text.rfind("|")
    if first == -1:
        return ""
    rows = []
    for row in text[first:last + 1].split("\n"):
        cells = row.split("|")
        if len(cells) > 2:  # text before the first and after the last "|" of a row stays
            inner = ["N/A" if c.strip().lower() in _EMPTY_CELLS else c.strip() for c in cells[1:-1]]
            row = f"{cells[0]}| {' | '.join(inner)} |{cells[-1]}"
        rows.append(row)
    return "\n".join(rows)


def header_cells(text: str) -> list[str] | None:
    """Header cells of an already lower-cased answer; None where ADELIE returns "" (no "|")."""
    first, last = text.find("|"), text.rfind("|")
    if first == -1:
        return None
    table = _replace(text[first:last + 1], _HEADER_REPLACEMENTS)
    return table.split("\n")[0].strip("|").strip().split(" | ")


def _header_counts(pairs, similarity, phantom: bool) -> tuple[float, float, float]:
    """ADELIE's soft header P/R/F (0-100) over (gold cells, predicted cells) pairs."""
    gold_n = pred_n = pred_in_gold = gold_in_pred = 0.0
    for gold, pred in pairs:
        gold_n += len(gold or [])
        pred_n += len(pred or [])
        if not phantom and (not gold or not pred):
            continue  # a side without cells adds nothing
        sims = similarity(gold if gold is not None else [""], pred if pred is not None else [""])
        pred_in_gold += float(sims.max(axis=0).sum())
        gold_in_pred += float(sims.max(axis=1).sum())
    p = 100.0 * pred_in_gold / pred_n if pred_n else 0.0
    r = 100.0 * gold_in_pred / gold_n if gold_n else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def _exact_similarity(gold: list[str], pred: list[str]) -> np.ndarray:
    return np.array([[float(g == c) for c in pred] for g in gold]).reshape(len(gold), len(pred))


def load_similarity(model_path: str | os.PathLike):
    """Cosine similarity of header cells with a local sentence-transformers model."""
    if not os.path.isdir(model_path):
        raise FileNotFoundError(f"sim_model: no model directory at {model_path} (it is never downloaded)")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ImportError("sim_model needs the sentence-transformers package "
                          "(pip install sentence-transformers); without sim_model the header "
                          "is scored by exact match instead") from None
    model = SentenceTransformer(str(model_path), device="cpu")

    def similarity(gold: list[str], pred: list[str]) -> np.ndarray:
        a = model.encode(gold, convert_to_numpy=True)
        b = model.encode(pred, convert_to_numpy=True)
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-8)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-8)
        return a @ b.T
    return similarity


def score(records: list[dict], sim_model: str | os.PathLike | None = None, similarity=None) -> dict:
    """`similarity(gold_cells, pred_cells) -> (G, P) array` may be given directly (tests)."""
    try:  # imported here: every other scorer (and every test module) works without it
        from rouge_score import rouge_scorer
    except ImportError as err:
        raise ImportError("the on-demand IE content score is ADELIE's ROUGE-Lsum, from the rouge-score "
                          "package: pip install rouge-score") from err
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=False)
    content, content_c, precisions, recalls = [], [], [], []
    headers = []
    for record in records:
        gold, output = gold_of(record).strip().lower(), record["output"]
        s = scorer.score(content_table(gold), content_table(output))["rougeLsum"]
        content.append(100 * s.fmeasure)
        precisions.append(s.precision)
        recalls.append(s.recall)
        s_c = scorer.score(content_table_corrected(gold), content_table_corrected(output))["rougeLsum"]
        content_c.append(100 * s_c.fmeasure)
        headers.append((header_cells(gold), header_cells(output.lower())))
    n = len(records)
    mean = (lambda xs: sum(xs) / n) if n else (lambda xs: 0.0)
    result = {"task": "ondemand", "precision": mean(precisions), "recall": mean(recalls),
              "f1": mean(content) / 100, "n": n, "content_rougeLsum": mean(content),
              "f1_corrected": mean(content_c) / 100, "content_rougeLsum_corrected": mean(content_c)}
    if sim_model is not None and similarity is None:
        similarity = load_similarity(sim_model)
    if similarity is not None:
        p, r, f = _header_counts(headers, similarity, phantom=True)
        result.update(header_sim_precision=p, header_sim_recall=r, header_sim_f1=f,
                      header_sim_f1_corrected=_header_counts(headers, similarity, phantom=False)[2])
    else:
        p, r, f = _header_counts(headers, _exact_similarity, phantom=False)
        result.update(header_exact_precision=p, header_exact_recall=r, header_exact_f1=f)
    return result
