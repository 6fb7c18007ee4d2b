"""Few-NERD scorer: ADELIE's rules on hand-worked answers, then on the sample files."""
import pytest

from ie_engine.data.scoring import ner


def test_answer_text_takes_first_marker_segment_case_sensitively():
    out = "Sure. [Answer]: Paris Hilton: person_actor; [Answer]: Rome: location_other"
    assert ner.answer_text(out) == "paris hilton: person_actor;"
    # "[answer]:" is not the marker: the whole output is the answer, "[answer]: x: t" has 3 parts
    assert ner.entities(ner.answer_text("[answer]: X: person_actor")) == {}


def test_piece_rules():
    assert ner.entities("a : person_actor ; b: person_actor.; c: person_actor..") == \
        {"a": "person_actor", "b": "person_actor"}  # one trailing "." removed, not two
    assert ner.entities("12:30: other_law; x: not_a_type; y: o") == {}  # 3 parts; unknown; "O"
    assert ner.entities("x: other_language; x: location_other") == {"x": "location_other"}  # last wins


def test_gpe_is_never_scored_by_adelie_but_is_by_the_corrected_variant():
    answer = "paris: location_gpe; dutch: other_language; dutch: location_gpe"
    assert ner.entities(answer) == {"dutch": "other_language"}
    assert ner.entities_corrected(answer) == {("paris", "location_gpe"), ("dutch", "other_language"),
                                              ("dutch", "location_gpe")}
    assert ("x", "o") not in ner.entities_corrected("x: O")


def test_micro_counts(record):
    records = [
        record("Paris: location_GPE; Louvre: building_other; Dutch: other_language; Dutch: location_GPE",
               "[Answer]: paris: location_GPE; louvre: building_other; dutch: other_language", "fewnerd"),
        record("A: person_actor", "B: person_actor; A: person_artist/author", "fewnerd"),
    ]
    m = ner.score(records)
    # exact: gold {louvre, dutch} + {a}; pred {louvre, dutch} + {b, a}; correct louvre, dutch
    assert (m["gold"], m["predicted"], m["correct"]) == (3, 4, 2)
    assert m["precision"] == 0.5 and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # corrected: gold 4 pairs + 1, pred 3 + 2, correct 3
    assert (m["gold_corrected"], m["predicted_corrected"], m["correct_corrected"]) == (5, 5, 3)
    assert m["f1_corrected"] == pytest.approx(0.6)


def test_empty_denominators_give_zero(record):
    m = ner.score([record("", "nothing here", "fewnerd")])
    assert (m["precision"], m["recall"], m["f1"], m["f1_corrected"]) == (0, 0, 0, 0)


FILES = ["zeroshot/few-nerd-supervised.jsonl", "fewshot_test_history/few-nerd-supervised.jsonl"]


def _gold(r):
    return r["messages"][-1]["content"]


@pytest.mark.parametrize("name", FILES)
def test_sample_gold_as_prediction_and_gpe(name, sample, outputs):
    records = sample(name)
    m = ner.score(outputs(records, [_gold(r) for r in records]))
    assert m["f1"] == 1.0 and m["f1_corrected"] == 1.0
    assert m["gold"] < m["gold_corrected"]  # GPE entities (and repeated entity strings) are missing

    # Leaving every GPE entity out of the answer changes nothing for ADELIE, and costs the
    # corrected recall exactly the gold GPE pairs.
    def is_gpe(piece):
        return piece.strip().removesuffix(".").endswith("location_GPE")
    n_gpe = sum(len({p.split(":")[0].strip().lower() for p in _gold(r).split(";") if is_gpe(p)})
                for r in records)
    assert n_gpe > 100
    no_gpe = [";".join(p for p in _gold(r).split(";") if not is_gpe(p)) for r in records]
    m2 = ner.score(outputs(records, no_gpe))
    assert (m2["precision"], m2["recall"], m2["f1"], m2["gold"]) == (1.0, 1.0, 1.0, m["gold"])
    assert m2["precision_corrected"] == 1.0
    assert m2["correct_corrected"] == m["gold_corrected"] - n_gpe
    assert m2["recall_corrected"] == pytest.approx(1 - n_gpe / m["gold_corrected"])

@pytest.mark.parametrize("name", FILES)
def test_sample_blank_outputs_lower_recall_by_their_share(name, sample, outputs):
    records = sample(name)
    dropped = [r for i, r in enumerate(records) if i % 3 == 0]
    gold_dropped = ner.score(outputs(dropped, [_gold(r) for r in dropped]))["gold"]
    total = ner.score(outputs(records, [_gold(r) for r in records]))["gold"]
    m = ner.score(outputs(records, ["" if i % 3 == 0 else _gold(r) for i, r in enumerate(records)]))
    recall = 1 - gold_dropped / total
    assert m["precision"] == 1.0
    assert m["recall"] == pytest.approx(recall) and m["f1"] == pytest.approx(2 * recall / (1 + recall))
