"""Precision / recall / F1 from counts, in the two conventions ADELIE's scorers use.

`safe_prf`: 0 wherever a denominator is 0 (Few-NERD's `safe_division`, and every corrected
variant here). `eps_prf`: ADELIE's SemEval and RichERE scripts add 1e-10 to each denominator
instead, so a perfect run prints 0.99999999995, not 1.0; reproducing ADELIE's printed numbers
means reproducing that term too.
"""
from __future__ import annotations


def safe_prf(correct: float, n_pred: float, n_gold: float) -> tuple[float, float, float]:
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def eps_prf(correct: float, n_pred: float, n_gold: float) -> tuple[float, float, float]:
    precision = correct / (n_pred + 1e-10)
    recall = correct / (n_gold + 1e-10)
    f1 = 2 * precision * recall / (precision + recall + 1e-10)
    return precision, recall, f1
