"""Scoring entry points: registry, prediction-file checks, score_file(s), markdown and the CLI."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ie_engine.data.scoring import format_markdown, score_file, score_files, score_records, task_for
from ie_engine.data.scoring.predictions import RecordError, read_predictions

REPO = Path(__file__).resolve().parents[2]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name, task", [
    ("Few-NERD-Supervised", "ner"), ("fewnerd", "ner"), ("semeval", "relation"), ("MATRES", "temporal"),
    ("RichERE-ed", "ed"), ("richere-EAE", "eae"), ("ondemand", "ondemand"), ("ROBUST", "openie"), ("ner", "ner")])
def test_task_for(name, task):
    assert task_for(name) == task


def test_task_choice_errors(record):
    with pytest.raises(ValueError, match="no scorer for dataset 'conll'.*few-nerd-supervised"):
        task_for("conll")
    mixed = [record("a: person_actor", "", "fewnerd"), record("", "", "semeval")]
    with pytest.raises(ValueError, match=r"one scorer, found \['ner', 'relation'\]"):
        score_records(mixed)
    nameless = {"messages": [{"role": "assistant", "content": ""}], "output": ""}
    with pytest.raises(RecordError, match="record 0: no 'datasets'"):
        score_records([nameless])
    assert score_records([nameless], task="semeval")["task"] == "relation"
    with pytest.raises(TypeError, match="unknown scoring option"):
        score_records(mixed[:1], beam=4)
    # an option for another task is ignored
    assert score_records(mixed[:1], sim_model="/nowhere")["f1"] == 0.0


@pytest.mark.parametrize("line, problem", [
    ('{"messages": [{"role": "assistant", "content": "x"}], "output": ', "invalid JSON"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "no 'output'"),
    ('{"messages": [{"role": "assistant", "content": "x"}], "output": null}', "'output' must be a string"),
    ('{"output": "x"}', "no 'messages'"),
    ('{"messages": [{"role": "assistant"}], "output": "x"}', "no string 'content'"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_prediction_file_names_file_and_line(tmp_path, line, problem, record):
    path = write_jsonl(tmp_path / "p.jsonl", [record("", ""), "", line])
    with pytest.raises(ValueError) as e:
        read_predictions(path)
    assert str(e.value).startswith(f"{path}:3: ") and problem in str(e.value)


def test_scorer_record_error_gets_file_and_line(tmp_path, record):
    path = write_jsonl(tmp_path / "MATRES.jsonl", [record("before", "", "MATRES"), "",
                                                     record("Before", "", "MATRES")])
    with pytest.raises(ValueError, match=rf"^{path}:3: MATRES gold must be one of"):
        score_file(path)


def test_score_files_names_and_markdown(tmp_path, record):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rows = [record("(x; cause and effect; y)", "(x; cause and effect; y)")]
    paths = [write_jsonl(tmp_path / d / "semeval.jsonl", rows) for d in "ab"]
    ner_row = record("A: person_actor", "A: person_actor; B: art_film", "fewnerd")
    paths.append(write_jsonl(tmp_path / "ner.jsonl", [ner_row]))
    metrics = score_files(paths)
    assert list(metrics) == ["a/semeval", "b/semeval", "ner"]
    table = format_markdown(metrics)
    assert "| ner | ner | 1 | 50.00 | 100.00 | 66.67 | 66.67 |  |" in table.splitlines()
    assert format_markdown(metrics["ner"]).splitlines()[2].startswith("|  | ner | 1 | 50.00 |")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ie_engine.data.scoring", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cli_end_to_end(tmp_path, record):
    ner = write_jsonl(tmp_path / "few-nerd.jsonl", [record("A: person_actor; B: art_film", "A: person_actor",
                                                                "few-nerd-supervised")])
    matres = write_jsonl(tmp_path / "MATRES.jsonl", [record("after", "[Answer]: (a; after; b)", "MATRES"),
                                                     record("before", "[Answer]: (a; after; b)", "MATRES")])
    out = tmp_path / "out" / "metrics.json"
    done = run_cli(ner, matres, "--out", out)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(out.read_text())
    assert metrics == json.loads(json.dumps(score_files([ner, matres])))
    assert metrics["few-nerd"]["recall"] == 0.5 and metrics["MATRES"]["f1"] == 0.5
    assert out.with_suffix(".md").read_text() == done.stdout == format_markdown(metrics)


def test_cli_bad_input_exits_2_with_only_the_message(tmp_path, record):
    bad = write_jsonl(tmp_path / "bad.jsonl", [record("", ""), '{"output": "x"'])
    done = run_cli(bad, "--out", tmp_path / "m.json")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"{bad}:2: invalid JSON") and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.json").exists()
    done = run_cli(tmp_path / "missing.jsonl")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "missing.jsonl" in done.stderr
