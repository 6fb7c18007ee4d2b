"""On-demand IE scorer: table cutting, ROUGE-Lsum content score and header scores."""
import importlib.util

import numpy as np
import pytest

from ie_engine.data.scoring import ondemand

# score() needs the rouge-score package; table cutting does not (the GPU image has no rouge-score)
needs_rouge = pytest.mark.skipif(importlib.util.find_spec("rouge_score") is None, reason="rouge-score not installed")

GOLD = "[Answer]: | Drug | Side Effects | Suggestions |\n| --- | --- | --- |\n| a | dizziness | None |"


def test_content_table_cut_and_replacements():
    text = "Here: | a | b |\n| --- | --- |\n| x | - |\nthat is all."
    assert ondemand.content_table(text) == "| a | b |\n| --- | --- |\n| x | N/A |\nthat is all."
    assert ondemand.content_table("no table") == ""
    # str.replace does not overlap: of three empty cells only the first and third become N/A
    assert ondemand.content_table("| | | |") == "| N/A | | N/A |"
    assert ondemand.content_table_corrected("| | | |\nafter") == "| N/A | N/A | N/A |"


@needs_rouge
def test_rouge_lsum_rows_are_sentences(record):
    # gold rows [a b], [c d]; prediction [a b]: LCS hits 2 of 4 gold tokens, 2 of 2 predicted
    m = ondemand.score([record("| a b |\n| c d |", "| a b |", "ondemand")])
    assert (m["precision"], m["recall"]) == (1.0, 0.5)
    assert m["content_rougeLsum"] == pytest.approx(200 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert ondemand.score([record("| a b |", "a b, no table", "ondemand")])["f1"] == 0.0


@needs_rouge
def test_output_case_quirk(record):
    out = GOLD.replace("None", "NONE")
    m = ondemand.score([record(GOLD, out, "ondemand")])
    assert m["content_rougeLsum"] < 100 and m["content_rougeLsum_corrected"] == 100
    assert ondemand.score([record(GOLD, GOLD, "ondemand")])["content_rougeLsum"] == 100


@needs_rouge
def test_header_exact_match(record):
    m = ondemand.score([record(GOLD, "| drug | effects |\n| --- | --- |", "ondemand"),
                        record(GOLD, "no table here", "ondemand")])
    # predicted cells [drug, effects] vs gold [drug, side effects, suggestions] twice
    assert m["header_exact_precision"] == 50.0
    assert m["header_exact_recall"] == pytest.approx(100 / 6)
    assert "header_sim_f1" not in m


@needs_rouge
def test_header_similarity_phantom_cells(record):
    def similarity(gold, pred):  # 1 for the same text, 0.5 otherwise
        return np.array([[1.0 if g == p else 0.5 for p in pred] for g in gold])
    records = [record("| a | b |", "no table", "ondemand"), record("| a |", "| a |", "ondemand")]
    m = ondemand.score(records, similarity=similarity)
    # ADELIE: the table-less answer is "" with 0 cells, yet its similarity (0.5) is summed
    assert m["header_sim_precision"] == pytest.approx(100 * 1.5 / 1)
    assert m["header_sim_recall"] == pytest.approx(100 * 2.0 / 3)
    # corrected: P = 1/1, R = 1/3
    assert m["header_sim_f1_corrected"] == pytest.approx(50.0)


@needs_rouge
def test_sim_model_is_never_downloaded(record, tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        ondemand.score([record("| a |", "| a |", "ondemand")], sim_model=str(tmp_path / "all-MiniLM-L6-v2"))


def _gold(r):
    return r["messages"][-1]["content"]


@needs_rouge
def test_sample_gold_as_prediction_and_blanks(sample, outputs):
    records = sample("zeroshot/ondemand.jsonl")
    m = ondemand.score(outputs(records, [_gold(r) for r in records]))
    assert (m["content_rougeLsum"], m["content_rougeLsum_corrected"], m["header_exact_f1"]) == (100, 100, 100)
    blank = [i % 5 == 0 for i in range(len(records))]
    m = ondemand.score(outputs(records, ["" if b else _gold(r) for r, b in zip(records, blank)]))
    assert m["content_rougeLsum"] == pytest.approx(100 * (1 - sum(blank) / len(records)))
    gold_cells = [len(ondemand.header_cells(_gold(r).strip().lower())) for r in records]
    missing = sum(n for n, b in zip(gold_cells, blank) if b)
    assert m["header_exact_precision"] == 100.0
    assert m["header_exact_recall"] == pytest.approx(100 * (1 - missing / sum(gold_cells)))
