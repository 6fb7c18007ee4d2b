"""SemEval scorer: ADELIE's counting rules on hand-worked answers, then on the sample files."""
import pytest

from ie_engine.data.scoring import relation
from ie_engine.data.scoring.predictions import RecordError


def counts(m):
    return m["tp"], m["n_pred"], m["n_gold"]


def counts_c(m):
    return m["tp_corrected"], m["n_pred_corrected"], m["n_gold_corrected"]


def test_triples_greedy_per_line_deduplicated():
    assert relation.triples("(a; b; c) (d; e; f)") == [("a; b; c) (d", "e", "f")]
    assert relation.triples("(a; b; c)\n(d; e; f)\n(a; b; c)") == [("a", "b", "c"), ("d", "e", "f")]
    assert relation.mirror(("x", "cause and effect", "y")) == ("y", "effect and cause", "x")
    assert len(relation.RELATIONS) == 18 and "whole and component" in relation.RELATIONS


def test_mirror_prediction_matches(record):
    m = relation.score([record("(dolphin; Whole and Component; tail)\n",
                               "[Answer]: (tail; Component and Whole; dolphin)")])
    assert counts(m) == (1, 1, 1) and counts_c(m) == (1, 1, 1)


def test_head_equal_tail_counts_twice(record):
    m = relation.score([record("(suitcase; container and content; suitcase)",
                               "(suitcase; container and content; suitcase)")])
    assert counts(m) == (1, 2, 1) and counts_c(m) == (1, 1, 1)
    assert m["precision"] == pytest.approx(0.5) and m["f1_corrected"] == 1.0


@pytest.mark.parametrize("output, exact, corrected", [
    ("(a; cause and effect; c)", (0, 0, 0), (0, 1, 1)),     # wrong entities: gold not counted
    ("(a; not related; b)", (0, 0, 0), (0, 0, 1)),          # label outside the 18: gold not counted
    ("[Answer]: Not related", (0, 0, 1), (0, 0, 1)),        # nothing predicted: gold counted
    ("(b; cause and effect; a)", (0, 1, 1), (0, 1, 1)),     # reversed entities, not the mirror label
    ("(a; cause and effect; b)\n(a; cause and effect; b)", (1, 1, 1), (1, 1, 1)),  # de-duplicated
])
def test_gold_count_rule(record, output, exact, corrected):
    m = relation.score([record("(a; Cause and Effect; b)", output)])
    assert counts(m) == exact and counts_c(m) == corrected


@pytest.mark.parametrize("gold", ["", "[Answer]: NA", "  \n"])
def test_without_gold_every_valid_label_counts(record, gold):
    out = "(x; effect and cause; y)\n(x; other; y)\n(u; member and collection; v)"
    m = relation.score([record(gold, out)])
    assert counts(m) == (0, 2, 0) and counts_c(m) == (0, 2, 0)


def test_marker_segment_and_case(record):
    out = "I think [Answer]: (A; Cause and Effect; B) [Answer]: (x; member and collection; y)"
    m = relation.score([record("(a; cause and effect; b)", out)])
    assert counts(m) == (1, 1, 1)


def test_epsilon_terms_keep_a_perfect_run_below_one(record):
    m = relation.score([record("(a; cause and effect; b)", "(a; cause and effect; b)")])
    p = 1 / (1 + 1e-10)
    assert m["precision"] == m["recall"] == p
    assert m["f1"] == 2 * p * p / (2 * p + 1e-10) and m["f1"] < 1.0
    assert m["f1_corrected"] == 1.0


def test_gold_without_triple_is_an_error(record):
    with pytest.raises(RecordError, match="record 1"):
        relation.score([record("", ""), record("cause and effect", "")])


def _gold(r):
    return r["messages"][-1]["content"]


@pytest.mark.parametrize("name, same_entity", [("zeroshot/semeval.jsonl", 1),
                                               ("fewshot_test_history/semeval.jsonl", 0)])
def test_sample_gold_as_prediction(name, same_entity, sample, outputs):
    records = sample(name)
    golds = [relation.gold_triples(_gold(r), i) for i, r in enumerate(records)]
    n_gold = sum(len(g) for g in golds)
    # records whose gold head equals its tail (zeroshot: "(suitcase; container and content; suitcase)")
    assert sum(1 for g in golds if g and g[0][0] == g[0][2]) == same_entity
    m = relation.score(outputs(records, [_gold(r) for r in records]))
    assert counts(m) == (n_gold, n_gold + same_entity, n_gold)
    assert m["precision"] == pytest.approx(n_gold / (n_gold + same_entity))
    assert m["recall"] == pytest.approx(1.0) and m["f1_corrected"] == 1.0


def _rewrite(records, label_for):
    """Outputs: the gold triple with relation label_for(i, relation), for every 4th record with gold."""
    outs, changed = [], 0
    for i, r in enumerate(records):
        g = relation.gold_triples(_gold(r), i)
        if g and i % 4 == 0:
            h, rel, t = g[0]
            outs.append(f"[Answer]: ({h}; {label_for(rel)}; {t})")
            changed += 1
        else:
            outs.append(_gold(r))
    return outs, changed


@pytest.mark.parametrize("name", ["zeroshot/semeval.jsonl", "fewshot_test_history/semeval.jsonl"])
def test_sample_perturbed(name, sample, outputs):
    records = sample(name)
    base = relation.score(outputs(records, [_gold(r) for r in records]))
    n_gold = base["n_gold_corrected"]

    # A label outside the 18 drops those records from recall's denominator: ADELIE's recall stays 1.
    outs, k = _rewrite(records, lambda rel: "not related")
    m = relation.score(outputs(records, outs))
    assert m["tp"] == m["n_gold"] == n_gold - k and m["recall"] == pytest.approx(1.0)
    assert m["recall_corrected"] == pytest.approx(1 - k / n_gold) and m["precision_corrected"] == 1.0

    # A wrong valid label (not the mirror): one fewer tp each, both counts unchanged.
    def wrong(rel):
        return next(x for x in sorted(relation.RELATIONS) if x != rel and set(x.split()) != set(rel.split()))
    outs, k = _rewrite(records, wrong)
    m = relation.score(outputs(records, outs))
    assert counts(m) == (n_gold - k, base["n_pred"], n_gold)
    assert m["f1_corrected"] == pytest.approx(1 - k / n_gold)

    # No answer at all: the gold still counts, recall falls by the share of records left out.
    outs = ["" if i % 4 == 0 else _gold(r) for i, r in enumerate(records)]
    left_out = sum(len(relation.gold_triples(_gold(r), i)) for i, r in enumerate(records) if i % 4 == 0)
    m = relation.score(outputs(records, outs))
    assert m["n_gold"] == n_gold and m["recall"] == pytest.approx(1 - left_out / n_gold)
