"""Errors for people: a recipe given a bad config or bad input prints the message alone (naming
the key, or the file and line) and exits 2, before any model is built; never a traceback."""
import json
import subprocess
import sys

import pytest

from recipe_utils import REPO, child_env


def run_recipe(tmp_path, recipe, *args):
    return subprocess.run([sys.executable, str(REPO / "recipes" / recipe), *args], cwd=tmp_path, env=child_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("recipe, arg, key", [
    ("sft.py", "optim.lr=-1", "optim.lr"),
    ("sft.py", "global_batch_rows=3", "global_batch_rows"),
    ("sft.py", "nope=1", "nope"),
    ("dpo.py", "dpo.beta=0", "dpo.beta"),
    ("dpo.py", "dpo.loss_type=ipo dpo.label_smoothing=0.1", "dpo.label_smoothing"),
])
def test_bad_config_prints_the_key_and_exits_2(tmp_path, recipe, arg, key):
    proc = run_recipe(tmp_path, recipe, f"output_dir={tmp_path / 'run'}", *arg.split())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert key in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # nothing started


def test_bad_record_prints_file_and_line_and_exits_2(tmp_path, cache_dir):
    from ie_engine.data.bundled import ensure_default_assets
    tokenizer = ensure_default_assets(str(cache_dir))["tokenizer"]
    bad = tmp_path / "bad.jsonl"
    good = {"dataset": "x", "id": 1, "messages": [{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": "[Answer]: none"}]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"id": 2, "messages": [{"role": "bot"}]}) + "\n")
    proc = run_recipe(tmp_path, "sft.py", f"output_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'c'}",
                      f"data.train_files=[{bad}]", f"data.tokenizer={tokenizer}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "bad.jsonl:2" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
