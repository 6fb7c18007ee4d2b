"""Benchmark: ADELIE's character BLEU, NLTK vs ie_engine.data.char_bleu (one pair at a time and batched).

    python -m ie_engine.bench.bench_char_bleu [--pairs 5000] [--chars 200] [--samples 5] [--seed 0]

Pairs are synthetic IE answers of about --chars characters: tuple lists "(head; relation; tail)"
over a small vocabulary (repetitive, like real IE answers), each gold with --samples sampled
variants (tuples replaced, dropped, truncated), as the IEFeedback scoring sees them. All three
implementations are checked to give the same floats before anything is timed. Reported: median
seconds over --rep runs, microseconds and thousand pairs per second, and the speed-up over NLTK
(one core: NLTK and char_bleu are pure Python, char_bleu_many NumPy sorts). Rows are appended to
bench/results/char_bleu.jsonl with date, git sha, device and versions.
"""
from __future__ import annotations

import argparse
import random

from ie_engine.bench.common import append_results, time_cpu
from ie_engine.data.char_bleu import char_bleu, char_bleu_many

WORDS = ("Ada Lovelace, Alan Turing, Paris, Vienna, Acme Labs, the World Bank, 1998, June 2004, "
         "person, location, organization, date, founded by, located in, member of, born in, "
         "Component and Whole, Cause and Effect, NA, attack, meet, transport, victim").split(", ")


def ie_answer(chars: int, rng: random.Random) -> str:
    """A tuple list of about `chars` characters."""
    parts: list[str] = []
    while len("; ".join(parts)) < chars:
        parts.append("(%s; %s; %s)" % tuple(rng.choice(WORDS) for _ in range(3)))
    return "; ".join(parts)[:chars]


def sampled_variant(gold: str, rng: random.Random) -> str:
    """gold with a few items replaced or dropped, sometimes cut short: a plausible model sample."""
    items = gold.split("; ")
    for _ in range(rng.randint(0, 4)):
        i = rng.randrange(len(items))
        if rng.random() < 0.3 and len(items) > 1:
            del items[i]
        else:
            items[i] = rng.choice(WORDS)
    text = "; ".join(items)
    return text[:rng.randint(len(text) // 2, len(text))] if rng.random() < 0.2 else text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--chars", type=int, default=200)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rep", type=int, default=3)
    args = ap.parse_args()
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # bench/test-only

    rng = random.Random(args.seed)
    golds, preds = [], []
    while len(preds) < args.pairs:
        gold = ie_answer(args.chars, rng)
        for _ in range(args.samples):
            golds.append(gold), preds.append(sampled_variant(gold, rng))
    golds, preds = golds[:args.pairs], preds[:args.pairs]
    smooth = SmoothingFunction().method3

    def run_nltk():
        return [sentence_bleu([list(g)], list(p), smoothing_function=smooth)
                for g, p in zip(golds, preds)]

    def run_char_bleu():
        return [char_bleu(g, p) for g, p in zip(golds, preds)]

    def run_many():
        return char_bleu_many(golds, preds)

    expected = run_nltk()
    for name, fn in (("char_bleu", run_char_bleu), ("char_bleu_many", run_many)):
        got = fn()
        assert got == expected, f"{name} differs from NLTK"
    mean_chars = sum(map(len, golds + preds)) / (2 * len(preds))
    rows, nltk_ms = [], None
    for name, fn in (("nltk", run_nltk), ("char_bleu", run_char_bleu),
                     ("char_bleu_many", run_many)):
        ms = time_cpu(fn, warmup=1, rep=args.rep)
        nltk_ms = nltk_ms or ms
        rows.append({"impl": name, "pairs": len(preds),
                     "mean_chars": round(mean_chars, 1), "s": ms / 1e3,
                     "us_per_pair": ms * 1e3 / len(preds),
                     "kpairs_per_s": len(preds) / ms, "speedup_vs_nltk": nltk_ms / ms})
    append_results("char_bleu", rows)


if __name__ == "__main__":
    main()
