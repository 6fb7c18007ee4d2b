"""Character BLEU as ADELIE scores IEFeedback samples, without NLTK, plus the answer extraction.

ADELIE (scripts/utils/DPO/compute_metric_4OpenInstruct.py) scores a sample with
    sentence_bleu([list(gold)], list(pred), smoothing_function=SmoothingFunction().method3)
over the characters (whitespace included) of the answer texts. Numerical contract, equal to that
call bit for bit (tests/data/test_feedback.py checks it against NLTK):
- p_n = clipped n-gram matches / max(1, hypothesis n-grams), n = 1..4, as exact integers.
- No unigram match (an empty hypothesis included) -> 0.0, before any smoothing.
- method3: the k-th zero p_n (k = 1, 2, ...) becomes 1 / (2**k * denominator).
- score = bp * exp(fsum(0.25 * log(p_n))), log of the correctly rounded float num / den (what
  NLTK's Fraction gives), bp = 1 if len(pred) > len(gold) else exp(1 - len(gold) / len(pred)).

`char_bleu` is the readable pure-Python version, one pair at a time (Counters of substrings).
`char_bleu_many` counts the n-grams of many pairs at once with NumPy sorts (on 5,000 pairs
of ~200 characters ~10x NLTK's speed and ~4x char_bleu's: bench/bench_char_bleu.py). Both end
in the same final formula, `_bleu_from_counts`, so they can only differ in counting, which the
tests compare.
`score_sample` / `score_samples` apply ADELIE's rule on whole texts: BLEU of the answer texts
(`answer_text`), -1.0 for a sample without the marker.
"""
from __future__ import annotations

import math
from collections import Counter
from operator import add
from typing import Sequence

import numpy as np

ANSWER_MARK = "[Answer]: "
MAX_ORDER = 4
_CHUNK_CHARS = 1 << 21  # characters counted together: peak ~0.5 GB of int64 arrays at most


def answer_text(text: str) -> str | None:
    """The text after the first "[Answer]: " up to any second one; None without the marker.

    This is ADELIE's `text.split("[Answer]: ")[1]` (an IndexError there is None here).
    """
    start = text.find(ANSWER_MARK)
    if start < 0:
        return None
    rest = text[start + len(ANSWER_MARK):]
    end = rest.find(ANSWER_MARK)
    return rest if end < 0 else rest[:end]


def _bleu_from_counts(matches: Sequence[int], pred_len: int, gold_len: int) -> float:
    """BLEU from the clipped matches of each order, as NLTK computes it (module docstring)."""
    if matches[0] == 0:
        return 0.0  # NLTK returns 0 before smoothing when no unigram matches
    logs, k = [], 1
    for n, num in enumerate(matches, 1):
        den = max(1, pred_len - n + 1)  # the hypothesis n-grams, at least 1
        if num:
            logs.append(0.25 * math.log(num / den))
        else:
            logs.append(0.25 * math.log(1 / (2 ** k * den)))
            k += 1
    bp = 1.0 if pred_len > gold_len else math.exp(1 - gold_len / pred_len)
    return bp * math.exp(math.fsum(logs))


def _ngram_lists(text: str) -> list:
    """[text, its bigrams, trigrams, 4-grams]: each order is the previous one extended by a
    character, with map(add) looping in C (faster than slicing in a comprehension)."""
    out, grams = [text], text
    for n in range(2, MAX_ORDER + 1):
        grams = list(map(add, grams, text[n - 1:]))
        out.append(grams)
    return out


def char_bleu(gold: str, pred: str) -> float:
    """NLTK's method3 sentence BLEU of pred against the single reference gold, over characters."""
    matches = []
    for pred_grams, gold_grams in zip(_ngram_lists(pred), _ngram_lists(gold)):
        pred_counts, gold_count = Counter(pred_grams), Counter(gold_grams).get
        matches.append(sum([c if c <= (g := gold_count(k, 0)) else g
                            for k, c in pred_counts.items()]))
    return _bleu_from_counts(matches, len(pred), len(gold))


def _char_ids(texts: Sequence[str], table: np.ndarray, sep_id: int) -> np.ndarray:
    """Dense char ids of all texts end to end, each followed by sep_id, (sum(len + 1),) int64."""
    joined = "\0".join(texts) + "\0"  # the separators' places; their ids are set below
    codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    ids = table[codes]
    ends = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1) - 1
    ids[ends] = sep_id
    return ids


def _clipped_matches(golds: Sequence[str], preds: Sequence[str]) -> np.ndarray | None:
    """(MAX_ORDER, P) clipped n-gram matches, or None when the keys cannot fit in int64.

    Each side's texts are laid end to end with a separator after each: 0 on the pred side, 1 on
    the gold side, real characters 2.. (dense over this chunk's alphabet, `bits` apiece). An
    n-gram that runs into a separator therefore never equals one of the other side and adds no
    match, so nothing needs masking. Key of an n-gram: pair, packed char ids, side bit. One sort
    of both sides' keys puts equal (pair, n-gram) together, pred before gold; each run's matches
    are min(pred count, gold count), summed per pair with bincount.
    """
    n_pairs = len(preds)
    everything = ("".join(golds) + "".join(preds)).encode("utf-32-le", "surrogatepass")
    alphabet = np.unique(np.frombuffer(everything, dtype=np.uint32))
    bits = max(1, (len(alphabet) + 1).bit_length())  # ids 0 .. len(alphabet) + 1
    pair_bits = max(1, (n_pairs - 1).bit_length())
    if pair_bits + MAX_ORDER * bits + 1 > 63:
        return None
    table = np.zeros(int(alphabet[-1]) + 1 if len(alphabet) else 1, dtype=np.int64)
    table[alphabet] = np.arange(2, len(alphabet) + 2)
    sides = []
    for side, texts in enumerate((preds, golds)):
        ids = _char_ids(texts, table, sep_id=side)
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=n_pairs) + 1
        pair = np.repeat(np.arange(n_pairs, dtype=np.int64), lengths)  # (N,) pair of each start
        sides.append((ids, pair, side))
    matches = np.zeros((MAX_ORDER, n_pairs), dtype=np.int64)
    grams = [ids for ids, _, _ in sides]
    for n in range(1, MAX_ORDER + 1):
        keys = []
        for s, (ids, pair, side) in enumerate(sides):
            if n > 1:  # extend each (n-1)-gram by the next character
                grams[s] = (grams[s][:-1] << bits) | ids[n - 1:]
            keys.append((((pair[:len(grams[s])] << (n * bits)) | grams[s]) << 1) | side)
        keys = np.sort(np.concatenate(keys))
        gram_keys = keys >> 1
        starts = np.flatnonzero(np.concatenate([[True], gram_keys[1:] != gram_keys[:-1]]))
        gold_before = np.concatenate([[0], np.cumsum(keys & 1)])  # gold keys before index i
        ends = np.append(starts[1:], len(keys))
        n_gold = gold_before[ends] - gold_before[starts]
        clipped = np.minimum(ends - starts - n_gold, n_gold)
        hit = clipped > 0
        matches[n - 1] = np.bincount(gram_keys[starts[hit]] >> (n * bits), weights=clipped[hit],
                                     minlength=n_pairs).astype(np.int64)
    return matches


def char_bleu_many(golds: Sequence[str], preds: Sequence[str]) -> list[float]:
    """[char_bleu(g, p) for g, p in zip(golds, preds)], counted with NumPy in chunks of pairs.

    A chunk whose alphabet is too large for 4 characters and the pair index to fit in an int64
    key is halved until it fits; a single such pair is scored by char_bleu.
    """
    if len(golds) != len(preds):
        raise ValueError(f"char_bleu_many: {len(golds)} golds but {len(preds)} preds")
    scores: list[float] = [0.0] * len(preds)
    todo, lo, chars = [], 0, 0
    for i, (gold, pred) in enumerate(zip(golds, preds)):
        chars += len(gold) + len(pred) + 2
        if chars >= _CHUNK_CHARS or i == len(preds) - 1:
            todo.append((lo, i + 1))
            lo, chars = i + 1, 0
    while todo:
        lo, hi = todo.pop()
        matches = _clipped_matches(golds[lo:hi], preds[lo:hi])
        if matches is None:
            if hi - lo == 1:
                scores[lo] = char_bleu(golds[lo], preds[lo])
            else:
                mid = (lo + hi) // 2
                todo += [(lo, mid), (mid, hi)]
            continue
        for j, pair_matches in enumerate(matches.T.tolist(), lo):
            scores[j] = _bleu_from_counts(pair_matches, len(preds[j]), len(golds[j]))
    return scores


def score_sample(gold: str, pred: str) -> float:
    """ADELIE's score of one sample: char BLEU of the answer texts; -1.0 if pred lacks the marker.

    Raises ValueError when gold has no marker (ADELIE's script stops there with an IndexError).
    """
    gold_answer, pred_answer = answer_text(gold), answer_text(pred)
    if gold_answer is None:
        raise ValueError(f"gold answer has no {ANSWER_MARK!r}: {gold[:80]!r}")
    return -1.0 if pred_answer is None else char_bleu(gold_answer, pred_answer)


def score_samples(golds: Sequence[str], preds: Sequence[str]) -> list[float]:
    """[score_sample(g, p) for g, p in zip(golds, preds)], the BLEUs from char_bleu_many."""
    gold_answers, pred_answers, where = [], [], []
    scores = [-1.0] * len(preds)
    for i, (gold, pred) in enumerate(zip(golds, preds, strict=True)):
        gold_answer, pred_answer = answer_text(gold), answer_text(pred)
        if gold_answer is None:
            raise ValueError(f"gold answer {i} has no {ANSWER_MARK!r}: {gold[:80]!r}")
        if pred_answer is not None:
            gold_answers.append(gold_answer), pred_answers.append(pred_answer), where.append(i)
    for i, score in zip(where, char_bleu_many(gold_answers, pred_answers)):
        scores[i] = score
    return scores
