"""recipes/eval.py: --score-only scores prediction files end to end (and reports a bad file by
file and line, exit 2, no traceback); a checkpoint is evaluated on the bundled held-out set; an
SFT run with eval.files set scores its own export at the end."""
import json
import subprocess
import sys

from recipe_utils import FAST, REPO, child_env, run, torchrun_cmd


def score_only(tmp_path, *paths):
    return subprocess.run([sys.executable, str(REPO / "recipes" / "eval.py"), "--score-only", *map(str, paths),
                           "--out", str(tmp_path / "m" / "metrics.json")], cwd=tmp_path, env=child_env(),
                          capture_output=True, text=True, timeout=120)


def record(gold, output, dataset="bundled-ner"):
    return {"dataset": dataset, "id": 1, "output": output,
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": gold}]}


def test_score_only_end_to_end(tmp_path):
    pred = tmp_path / "ner.jsonl"
    pred.write_text(json.dumps(record("[Answer]: Ada: person; Oslo: location;", "[Answer]: Ada: person;")) + "\n")
    proc = score_only(tmp_path, pred)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["ner"]["precision"] == 1.0 and metrics["ner"]["recall"] == 0.5 and metrics["ner"]["n"] == 1
    assert (tmp_path / "m" / "metrics.md").read_text().count("|") > 10 and "| ner |" in proc.stdout


def test_score_only_bad_file_names_file_and_line(tmp_path):
    pred = tmp_path / "bad.jsonl"
    pred.write_text(json.dumps(record("[Answer]: x: person;", "y")) + "\n{not json\n")
    proc = score_only(tmp_path, pred)
    assert proc.returncode == 2 and "bad.jsonl:2" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    no_output = dict(record("[Answer]: x: person;", "y"))
    del no_output["output"]
    pred.write_text(json.dumps(no_output) + "\n")
    proc = score_only(tmp_path, pred)
    assert proc.returncode == 2 and "bad.jsonl:1" in proc.stderr and "output" in proc.stderr, proc.stderr


def test_eval_recipe_scores_a_checkpoint_on_the_bundled_heldout_set(tmp_path, cache_dir, sft_run):
    out = tmp_path / "eval"
    run(torchrun_cmd("eval.py", 2, [f"model.checkpoint={sft_run / 'final'}", f"eval.cache_dir={cache_dir}",
                                    f"output_dir={out}", "eval.max_records=12", "eval.generate.max_new_tokens=24"]),
        cwd=tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"heldout:bundled-ner", "heldout:bundled-re", "heldout:bundled-ed", "heldout"} == set(metrics)
    assert sum(m["n"] for k, m in metrics.items() if ":" in k) == metrics["heldout"]["n"] == 12
    assert all(0.0 <= m[k] <= 1.0 for m in metrics.values() for k in ("precision", "recall", "f1"))
    rows = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all("output" in r and r["sample_index"] == 0 for r in rows)


def test_sft_with_eval_files_scores_its_export(tmp_path, cache_dir):
    out = tmp_path / "sft"
    run(torchrun_cmd("sft.py", 1, [*FAST, f"data.cache_dir={cache_dir}", f"output_dir={out}", "max_steps=2",
                                   "eval.files=[bundled]", "eval.max_records=6", "eval.generate.max_new_tokens=16"]),
        cwd=tmp_path)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["heldout"]["n"] == 6
