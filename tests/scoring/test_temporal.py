"""MATRES scorer: ADELIE's answer regex and substring rules by hand, then on the sample file."""
import re

import pytest

from ie_engine.data.scoring import temporal
from ie_engine.data.scoring.predictions import RecordError


@pytest.mark.parametrize("output, labels", [
    ("[Answer]: (restore; before; trip)", ["before"]),
    ("before", []),                                   # no ": ", so ADELIE never looks at it
    ("(restore; before; trip)", []),
    ("r: (a; before; b)", ["before"]),                # "[Answer]" is a character class: "r" passes
    ("1: (a; before; b)", []),                        # none of A n s w e r before the ": "
    ("[Answer]: ...\n(a; before; b)", []),            # the answer line has no letters
    ("[Answer]: (a; before/after; b)", ["before", "after"]),  # every label that is a substring
    ("[Answer]: (a; vaguely; b)", ["vague"]),
    ("[Answer]: (a; before; b) (c; after; d)", ["after"]),    # greedy: last middle field on a line
    ("[Answer]: (a; before; b)\n(c; after; d)", ["before"]),  # first match over lines
    ("[Answer]: (a; BEFORE; b)", ["before"]),
    ("[Answer]: (a; none; b)", []),
])
def test_output_labels(output, labels):
    assert temporal.output_labels(output) == labels


def test_counts_per_class_and_total(record):
    rows = [("before", "[Answer]: (a; before/after; b)"), ("after", "after"), ("", "[Answer]: (a; equal; b)"),
            ("none", "[Answer]: (a; none; b)"), ("vague", "[Answer]: (a; vague; b)")]
    m = temporal.score([record(g, o, "MATRES") for g, o in rows])
    pc = m["per_class"]
    assert (m["gold"], m["predicted"], m["correct"]) == (3, 4, 2)
    assert (m["precision"], m["recall"]) == (0.5, pytest.approx(2 / 3))
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert (pc["before"]["precision"], pc["before"]["recall"]) == (1.0, 1.0)
    assert (pc["after"]["predicted"], pc["after"]["f1"]) == (1, 0.0)
    assert (pc["equal"]["precision"], pc["equal"]["recall"]) == (0.0, 0.0)  # 0/0 is nan in ADELIE
    # corrected: "before/after" is no label, bare "after" is; gold after, equal (wrong), vague
    assert m["precision_corrected"] == m["recall_corrected"] == pytest.approx(2 / 3)
    assert m["per_class_corrected"]["before"]["gold"] == 1


def test_unknown_gold_is_an_error(record):
    with pytest.raises(RecordError, match="record 0"):
        temporal.score([record("BEFORE", "", "MATRES")])


def _gold(r):
    return r["messages"][-1]["content"]


def _formatted(r, label):
    """The answer the prompt asks for, with the events named in the user turn."""
    user = r["messages"][-2]["content"]
    first = re.search(r"The first event: (.*)", user).group(1)
    second = re.search(r"The second event: (.*)", user).group(1)
    return f"[Answer]: ({first}; {label}; {second})"


def test_sample_gold_as_prediction(sample, outputs):
    records = sample("zeroshot/MATRES.jsonl")
    n_gold = sum(_gold(r) in temporal.LABELS for r in records)
    m = temporal.score(outputs(records, [_formatted(r, _gold(r) or "none") for r in records]))
    assert (m["f1"], m["f1_corrected"], m["predicted"], m["gold"]) == (1.0, 1.0, n_gold, n_gold)
    # The bare gold label ("before") has no ": " and is never counted by ADELIE.
    bare = temporal.score(outputs(records, [_gold(r) for r in records]))
    assert (bare["predicted"], bare["f1"]) == (0, 0.0) and bare["f1_corrected"] == 1.0


def test_sample_two_labels_in_one_answer(sample, outputs):
    records = sample("zeroshot/MATRES.jsonl")
    hit = [i % 3 == 0 and _gold(r) == "before" for i, r in enumerate(records)]
    k, n_gold = sum(hit), sum(_gold(r) in temporal.LABELS for r in records)
    outs = [_formatted(r, "before/after" if h else _gold(r) or "none") for r, h in zip(records, hit)]
    m = temporal.score(outputs(records, outs))
    # ADELIE: k extra (wrong) "after" outputs, every "before" still correct
    assert (m["predicted"], m["correct"], m["recall"]) == (n_gold + k, n_gold, 1.0)
    assert m["precision"] == pytest.approx(n_gold / (n_gold + k))
    assert m["per_class"]["before"]["f1"] == 1.0 and m["per_class"]["after"]["precision"] < 1.0
    # corrected: those answers are no label at all
    assert m["precision_corrected"] == 1.0 and m["recall_corrected"] == pytest.approx(1 - k / n_gold)
