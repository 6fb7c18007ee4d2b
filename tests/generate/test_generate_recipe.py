"""recipes/generate.py under torchrun: the same files from 1 and 2 ranks, the embedded default
(no arguments), and a bad record ending the run with exit code 2 and the message alone."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from recipe_utils import child_env, run, torchrun_cmd


def test_one_and_two_ranks_write_the_same_files(tmp_path, bundled, checkpoint):
    lines = Path(bundled["sft"]).read_text().splitlines()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(lines[:7]) + "\n")
    b.write_text("\n".join(lines[100:104]) + "\n")
    args = [f"model.checkpoint={checkpoint}", f"data.files=[{a},{b}]", "generate.n=3", "generate.temperature=1.0",
            "generate.top_p=0.9", "generate.max_new_tokens=16", "seed=5", "generate.batch_size=2",
            "parallel.timeout_s=120"]
    outs = {}
    for nproc in (1, 2):
        out = tmp_path / f"out{nproc}"
        proc = run(torchrun_cmd("generate.py", nproc, [*args, f"output_dir={out}"]), cwd=tmp_path)
        assert "generate: prompts 11" in proc.stdout + proc.stderr
        outs[nproc] = [(out / n).read_text() for n in ("a.jsonl", "b.jsonl")]
        assert len(list((out / "parts").glob("rank-*.jsonl"))) == nproc
    assert outs[1] == outs[2]
    rows = [json.loads(line) for line in outs[1][0].splitlines()]
    assert [r["sample_index"] for r in rows] == [0, 1, 2] * 7


def test_the_embedded_default_answers_the_bundled_prompts(tmp_path, bundled, checkpoint):
    shutil.copytree(checkpoint, tmp_path / "runs" / "sft" / "final")
    shutil.copytree(Path(bundled["sft"]).parent, tmp_path / "runs" / "cache")
    run(torchrun_cmd("generate.py", 1, []), cwd=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "generate" / "heldout.jsonl").read_text().splitlines()]
    n = len(Path(bundled["heldout"]).read_text().splitlines())
    assert len(rows) == n and all(r["sample_index"] == 0 for r in rows)
    assert json.loads((tmp_path / "runs" / "generate" / "summary.json").read_text())["samples"] == n


def test_a_bad_record_exits_2_with_file_and_line_and_no_traceback(tmp_path, checkpoint):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "messages": [{"role": "user", "content": "hi"}]}\n{"id": 2, "messages": []}\n')
    cmd = [sys.executable, str(Path(__file__).resolve().parents[2] / "recipes" / "generate.py"),
           f"model.checkpoint={checkpoint}", f"data.files=[{bad}]", f"output_dir={tmp_path / 'out'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "bad.jsonl:2: messages: expected a non-empty list" in proc.stderr
    assert "Traceback" not in proc.stderr
