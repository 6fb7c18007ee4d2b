"""The bundled sets' item-set scorer: hand-worked cases, and the bundled held-out set scored
against itself and against perturbed answers."""
import json

import pytest

from ie_engine.data.scoring import score_records, task_for


def rec(dataset, gold, output):
    return {"dataset": dataset, "id": 0, "output": output,
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": gold}]}


def test_ner_items_micro_f1():
    records = [rec("bundled-ner", "[Answer]: Ada Lovelace: person; Paris: location;",
                   "[Answer]: Ada Lovelace: person; Paris: organization; Kyoto: location;"),
               rec("bundled-ner", "[Answer]: No entities found", "[Answer]: No entities found")]
    m = score_records(records)
    assert task_for("bundled-ner") == "generic"
    assert m["counts"] == {"correct": 1, "pred": 3, "gold": 2}
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(0.5)
    assert m["exact_match"] == 0.5


def test_relation_triples_and_not_related():
    records = [rec("bundled-re", "[Answer]: (Ada; work for; Globex)", "[Answer]: (Ada; work for; Globex) more text"),
               rec("bundled-re", "[Answer]: (Ada; Not related; Oslo)", "[Answer]: (Ada; born in; Oslo)")]
    m = score_records(records)
    assert m["counts"] == {"correct": 1, "pred": 2, "gold": 1}
    assert m["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_only_the_first_answer_counts():
    m = score_records([rec("bundled-ed", "[Answer]: flew: Transport;",
                           "[Answer]: flew: Transport; [Answer]: wed: Marry;")])
    assert m["f1"] == 1.0


def test_bundled_heldout_gold_scores_one_and_perturbed_less(tmp_path):
    from ie_engine.data.bundled import ensure_default_assets
    path = ensure_default_assets(tmp_path)["heldout"]
    records = [json.loads(line) for line in open(path)]
    for r in records:
        r["output"] = r["messages"][-1]["content"]
    by_task = {}
    for r in records:
        by_task.setdefault(r["dataset"], []).append(r)
    for name, recs in by_task.items():
        assert score_records(recs)["f1"] == 1.0, name
        blank = [dict(r, output="[Answer]: ") for r in recs]
        m = score_records(blank)
        assert m["recall"] == 0.0 and m["counts"]["gold"] > 0, name


def test_a_file_mixing_datasets_gets_a_row_per_dataset(tmp_path):
    from ie_engine.data.scoring import score_files
    path = tmp_path / "heldout.jsonl"
    rows = [rec("bundled-ner", "[Answer]: Ada: person;", "[Answer]: Ada: person;"),
            rec("bundled-re", "[Answer]: (Ada; work for; Globex)", "[Answer]: (Ada; born in; Globex)")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = score_files([path])
    assert set(m) == {"heldout", "heldout:bundled-ner", "heldout:bundled-re"}
    assert m["heldout:bundled-ner"]["f1"] == 1.0 and m["heldout:bundled-re"]["f1"] == 0.0
    assert m["heldout"]["f1"] == pytest.approx(0.5)
