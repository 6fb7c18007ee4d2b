"""IEFeedback: preference pairs from scored samples of the SFT model, as ADELIE builds them.

    pairs, stats = build_pairs(items, limit=10000, gold_rate=0.7, min_delta=0.1, seed=0)
    write_feedback(pairs, "IEFeedback.json")   # read back by ie_engine.data.formats.read_dpo

`items`, in prompt order: {"record": {"dataset" | "datasets", "id", "messages"}, "samples":
[sampled output texts, in sample order], "scores": [floats] (optional)}. The record's last
message is the gold assistant answer ("... [Answer]: ..."); the others are the prompt. Without
"scores", an item is scored here with ie_engine.data.char_bleu.score_samples (char BLEU of the answer
texts, -1.0 for a sample without "[Answer]: "); given scores must be -1.0 or within [0, 1].

The rules (ADELIE's scripts/utils/DPO/merge.py, which writes IEFeedback.json):
1. Model vs model, prompts in order: chosen = the first sample with the highest score above -1,
   rejected = the first sample with the lowest score (a -1 sample can be rejected, never chosen).
   Kept when chosen - rejected > min_delta, until limit - int(limit * gold_rate) pairs.
2. Gold vs model: int(limit * gold_rate) prompts are drawn at random from those that gave no
   model pair (delta too small, all samples -1, over the limit, identical texts), then taken in
   prompt order: chosen = the gold message, rejected = the first lowest-scoring sample, kept when
   1 - its score > min_delta. Dropped draws are not replaced, so there can be fewer gold pairs.
3. Output: model pairs, then gold pairs, each {"dataset", "id", "messages": the record's
   messages (gold included), "chosen": prompt + [answer], "rejected": prompt + [answer]}, the
   answers being the whole sample texts (explanation included) and the whole gold message.
Ours vs ADELIE: the draw uses random.Random(seed) (ADELIE's was unseeded; the same seed draws
what ADELIE would have after random.seed(seed)); fewer leftover prompts than the gold target
draws them all (ADELIE's random.sample raised); a prompt without samples is skipped; and a pair
whose chosen and rejected texts are equal is dropped unless keep_identical=True (ADELIE keeps
them: an exact copy of a short gold such as "[Answer]: NA" scores 2**-0.75 < 1, since a 2-char
answer has no 3- or 4-grams, so it becomes "rejected" against itself). A dropped model pair
leaves its prompt to the gold draw and does not count towards the limit.
"""
from __future__ import annotations

import json
import os
import random
import statistics
from pathlib import Path
from typing import Any, Sequence

from ie_engine.data.char_bleu import ANSWER_MARK, score_samples

MODEL_SKIPS = ("no_samples", "all_invalid", "delta_small", "identical", "over_limit")
GOLD_SKIPS = ("delta_small", "identical")


def _where(index: int, record: Any) -> str:
    if isinstance(record, dict):
        return f"item {index} ({record.get('dataset', record.get('datasets'))}/{record.get('id')})"
    return f"item {index}"


def _check_item(index: int, item: Any) -> tuple[dict, list[str], list | None]:
    """(record, samples, scores or None) of one item; a bad one raises ValueError naming it."""
    record = item.get("record") if isinstance(item, dict) else None
    where = _where(index, record)
    if not isinstance(record, dict):
        raise ValueError(f"{where}: record: expected an object")
    messages = record.get("messages")
    if (not isinstance(messages, list) or len(messages) < 2
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                       for m in messages)):
        raise ValueError(f"{where}: record.messages: expected a prompt and a gold answer, "
                         "each {role, content}")
    if messages[-1].get("role") != "assistant":
        raise ValueError(f"{where}: record.messages[-1].role: the gold answer must be an "
                         f"assistant turn, got {messages[-1].get('role')!r}")
    samples = item.get("samples", [])
    if not isinstance(samples, list) or not all(isinstance(s, str) for s in samples):
        raise ValueError(f"{where}: samples: expected a list of strings")
    scores = item.get("scores")
    if scores is not None:
        if not isinstance(scores, list) or len(scores) != len(samples):
            raise ValueError(f"{where}: scores: expected {len(samples)} numbers, one per sample")
        for j, s in enumerate(scores):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not (
                    s == -1 or 0 <= s <= 1):
                raise ValueError(f"{where}: scores[{j}]: {s!r} is neither -1 nor in [0, 1]")
    return record, samples, scores


def _score_missing(checked: list[tuple[dict, list[str], list | None]]) -> list[list[float]]:
    """Each item's scores: given ones as floats, the others from one batched score_samples
    (its golds checked for the marker by the caller)."""
    golds, preds, owners = [], [], []
    for i, (record, samples, scores) in enumerate(checked):
        if scores is None:
            golds += [record["messages"][-1]["content"]] * len(samples)
            preds += samples
            owners.append(i)
    computed = iter(score_samples(golds, preds))
    return [[float(s) for s in scores] if scores is not None
            else [next(computed) for _ in samples] for _, samples, scores in checked]


def _lowest(scores: Sequence[float]) -> int:
    """Index of the first sample with the lowest score (-1 samples included)."""
    return min(range(len(scores)), key=scores.__getitem__)


def _pair(index: int, record: dict, chosen: dict, rejected: dict) -> dict:
    """One output record; a record without an id gets its prompt position (as read_sft does)."""
    prompt = record["messages"][:-1]
    return {"dataset": record.get("dataset", record.get("datasets")),
            "id": record.get("id", index),
            "messages": record["messages"], "chosen": [*prompt, chosen],
            "rejected": [*prompt, rejected]}


def build_pairs(items: Sequence[dict], *, limit: int = 10000, gold_rate: float = 0.7,
                min_delta: float = 0.1, seed: int = 0,
                keep_identical: bool = False) -> tuple[list[dict], dict]:
    """IEFeedback pairs from scored samples (rules in the module docstring) and their stats."""
    if limit < 0 or not 0 <= gold_rate <= 1:
        raise ValueError(f"build_pairs: need limit >= 0 and 0 <= gold_rate <= 1, got limit="
                         f"{limit}, gold_rate={gold_rate}")
    checked = [_check_item(i, item) for i, item in enumerate(items)]
    for i, (record, _, scores) in enumerate(checked):  # ADELIE's scorer stops on such a gold
        if scores is None and ANSWER_MARK not in record["messages"][-1]["content"]:
            raise ValueError(f"{_where(i, record)}: record.messages[-1].content: gold answer "
                             f"has no {ANSWER_MARK!r} to score samples against")
    all_scores = _score_missing(checked)
    gold_target = int(limit * gold_rate)  # ADELIE: int(Limit_DPO_data * gold_rate)
    model_limit = limit - gold_target
    model_pairs, leftover, deltas = [], [], []
    model_skipped = dict.fromkeys(MODEL_SKIPS, 0)
    for i, ((record, samples, _), scores) in enumerate(zip(checked, all_scores)):
        if not samples:
            model_skipped["no_samples"] += 1
            continue  # nothing to reject, so no gold pair either
        valid = [j for j, s in enumerate(scores) if s > -1]
        if not valid:
            reason = "all_invalid"
        else:
            best = max(valid, key=scores.__getitem__)  # max keeps the first of equal scores
            worst = _lowest(scores)
            delta = scores[best] - scores[worst]
            if delta <= min_delta:
                reason = "delta_small"
            elif not keep_identical and samples[best] == samples[worst]:
                reason = "identical"
            elif len(model_pairs) >= model_limit:
                reason = "over_limit"
            else:
                model_pairs.append(_pair(i, record,
                                         {"role": "assistant", "content": samples[best]},
                                         {"role": "assistant", "content": samples[worst]}))
                deltas.append(delta)
                continue
        model_skipped[reason] += 1
        leftover.append(i)

    drawn = sorted(random.Random(seed).sample(leftover, min(gold_target, len(leftover))))
    gold_pairs, gold_skipped = [], dict.fromkeys(GOLD_SKIPS, 0)
    for i in drawn:
        (record, samples, _), scores = checked[i], all_scores[i]
        worst = _lowest(scores)
        gold = record["messages"][-1]
        if 1.0 - scores[worst] <= min_delta:
            gold_skipped["delta_small"] += 1
        elif not keep_identical and gold["content"] == samples[worst]:
            gold_skipped["identical"] += 1
        else:
            gold_pairs.append(_pair(i, record,
                                    {"role": "assistant", "content": gold["content"]},
                                    {"role": "assistant", "content": samples[worst]}))
            deltas.append(1.0 - scores[worst])

    pairs = model_pairs + gold_pairs
    flat = [s for scores in all_scores for s in scores]
    scored = [s for s in flat if s != -1]
    per_dataset: dict[str, int] = {}
    for p in pairs:
        per_dataset[p["dataset"]] = per_dataset.get(p["dataset"], 0) + 1
    stats = {
        "prompts": len(checked), "samples": len(flat),
        "samples_without_answer": len(flat) - len(scored),
        "score_mean": statistics.fmean(scored) if scored else None,  # over samples scored >= 0
        "score_std": statistics.pstdev(scored) if scored else None,
        "pairs": len(pairs), "model_pairs": len(model_pairs), "gold_pairs": len(gold_pairs),
        "gold_fraction": len(gold_pairs) / len(pairs) if pairs else None,
        "mean_delta": statistics.fmean(deltas) if deltas else None,
        "model_limit": model_limit, "gold_target": gold_target, "leftover_prompts": len(leftover),
        "gold_drawn": len(drawn), "model_skipped": model_skipped, "gold_skipped": gold_skipped,
        "prompts_without_pair": len(checked) - len(pairs), "pairs_per_dataset": per_dataset,
        "settings": {"limit": limit, "gold_rate": gold_rate, "min_delta": min_delta,
                     "seed": seed, "keep_identical": keep_identical},
    }
    return pairs, stats


def write_feedback(pairs: list[dict], path: str | os.PathLike) -> Path:
    """Write pairs as one JSON array (ADELIE's IEFeedback.json layout), atomically: the text goes
    to a temporary file renamed over path, so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(pairs, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
