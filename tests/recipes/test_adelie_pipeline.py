"""recipes/adelie.py end to end at a tiny size: SFT -> feedback -> DPO -> evaluation of base, SFT
and DPO, one table (report.md, report.json, report.png); a rerun resumes (every stage skipped)."""
import json
import subprocess
import sys

import pytest

from recipe_utils import REPO, child_env

pytestmark = pytest.mark.slow


def test_pipeline_end_to_end_and_resume(tmp_path):
    out = tmp_path / "adelie"
    cmd = [sys.executable, str(REPO / "recipes" / "adelie.py"), f"output_dir={out}", "nproc_per_node=1",
           "sft_args=[max_steps=2,data.seq_len=256,eval_every=0]",
           "feedback_args=[data.max_records=6,generate.n=2,generate.max_new_tokens=12]",
           "dpo_args=[max_steps=1,data.seq_len=256,global_batch_rows=2,data.rows_per_micro_batch=2]",
           "eval_args=[eval.max_records=6,eval.generate.max_new_tokens=12]"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = json.loads((out / "report.json").read_text())
    assert list(table) == ["base", "sft", "dpo"]
    assert all({"bundled-ner", "bundled-re", "bundled-ed", "average"} <= {k.split(":")[-1] for k in row}
               for row in table.values())
    assert (out / "report.png").stat().st_size > 0 and "| dpo |" in (out / "report.md").read_text()
    assert (out / "base" / "config.json").exists() and (out / "feedback" / "feedback.json").exists()
    again = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done already") == 6, again.stdout[-2000:]
