"""CaRB / ROBUST scorer: tuple parsing, the lenient binary matcher, per-sentence and robust scores.
(ROBUST's gold is not public in ADELIE's repository; everything here is hand-made.)"""
import json

import pytest

from ie_engine.data.scoring import openie, score_records

OBAMA = ["born in", "Obama", "Hawaii"]


def test_parse_tuples():
    out = "x [Answer]: (born in; Obama; Hawaii)\n(is; he; president) [Answer]: (a; b)"
    assert openie.parse_tuples(out) == \
        [OBAMA, ["is", "he", "president"]]
    assert openie.parse_tuples("(a; b) (c; d)") == [["a", "b) (c", "d"]]  # greedy: one tuple per line
    assert openie.parse_tuples("[Answer]:(a; b)") == [["a", "b"]]  # marker needs its space: whole output


@pytest.mark.parametrize("gold, pred, expected", [
    (["was born in", "Obama", "Hawaii"], OBAMA, [1.0, 0.8]),        # 4 of 4 predicted, 4 of 5 gold tokens
    (["founded", "Jobs", "Apple"], ["started", "Jobs", "Apple"], [0, 0]),  # predicate must overlap
    (["is", "sky", "blue"], ["be", "sky", "blue"], [1.0, 1.0]),      # "be" matches a form of be
    (["likes", "A", "B"], ["likes", "A"], [0, 0]),                   # arg2 missing
    (["gave", "John", "Mary", "a book"], ["gave", "John", "Mary a book"], [1.0, 1.0]),  # binarised
    (["Gave", "John", "Mary"], ["gave", "John", "Mary"], [0, 0]),   # case-sensitive
    (["said", "the minister", "taxes will rise"], ["said", "taxes will rise", "the minister"], [1.0, 1.0]),
    (["announced", "the minister", "taxes will rise"], ["announced", "taxes will rise", "the minister"],
     [1 / 6, 1 / 6]),                                                # args swapped only for said-verbs
])
def test_match(gold, pred, expected):
    assert openie.match(gold, pred) == pytest.approx(expected)


def test_sentence_scores():
    assert openie.score_sentence([OBAMA], []) == (0, 0, 0, 0)
    assert openie.score_sentence([], [OBAMA]) == (0, 1, 0, 0)
    # precision is one-to-one (the second prediction matches no gold left), recall is not
    president = ["is", "Obama", "president"]
    assert openie.score_sentence([OBAMA, president], [OBAMA, ["born in", "Obama", "Honolulu Hawaii"]]) == \
        (0.375, 0.5, 0.5, 0.5)
    # one prediction earns recall from two gold tuples: R = (1 + 0.8) / 2
    assert openie.score_sentence([OBAMA, ["born in", "Barack Obama", "Hawaii"]], [OBAMA]) == \
        (0.9, 1.0, 0.9, 0.947)  # AUC = R (P + 1) / 2; F1 rounded to 3 digits


def test_carb_and_robust_aggregation(record, tmp_path):
    gold = [{"ori_sent": "s1", "ori_args": [OBAMA], "paraphrases": [{"sent": "s1 again", "args": [OBAMA]}]},
            {"ori_sent": "s2", "ori_args": [["is", "sky", "blue"]], "paraphrases": []}]
    path = tmp_path / "ROBUST.json"
    path.write_text(json.dumps(gold))
    outs = ["[Answer]: (born in; Obama; Hawaii)", "I cannot tell.", "[Answer]: (is; sky; blue)"]
    records = [record("", o, "ROBUST") for o in outs]
    m = score_records(records, gold=str(path))
    assert (m["task"], m["n"], m["samples"]) == ("openie", 3, 2)
    assert (m["precision"], m["recall"], m["f1"], m["auc"]) == (1.0, 1.0, 1.0, 1.0)
    # the worst sentence of sample 1 is the missed paraphrase
    assert [m[f"robust_{k}"] for k in ("precision", "recall", "f1", "auc")] == [0.5] * 4
    with pytest.raises(ValueError, match="2 predictions for 3 sentences"):
        score_records(records[:2], gold=str(path))
    with pytest.raises(ValueError, match="needs gold=PATH"):
        score_records(records)
