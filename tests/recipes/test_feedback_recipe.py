"""recipes/feedback.py end to end: samples from an SFT export on the bundled prompt pool, scores
them, writes IEFeedback pairs that recipes/dpo.py trains on unchanged; a rerun (resuming from the
finished samples) writes the same pairs."""
import json

from ie_engine.data.formats import read_dpo

from recipe_utils import FAST, metrics, run, torchrun_cmd


def test_feedback_pairs_feed_dpo(tmp_path, cache_dir, sft_run):
    out = tmp_path / "fb"
    args = [f"model.checkpoint={sft_run / 'final'}", f"data.cache_dir={cache_dir}", f"output_dir={out}",
            "data.max_records=8", "generate.n=3", "generate.max_new_tokens=16", "feedback.limit=20"]
    run(torchrun_cmd("feedback.py", 2, args), cwd=tmp_path)
    stats = json.loads((out / "stats.json").read_text())
    scored = [json.loads(line) for line in (out / "scored.jsonl").read_text().splitlines()]
    assert stats["prompts"] == 8 and stats["samples"] == 24 and len(scored) == 24
    assert all(s["score"] == -1.0 or 0.0 <= s["score"] <= 1.0 for s in scored)
    assert stats["pairs"] == stats["model_pairs"] + stats["gold_pairs"] > 0
    pairs = list(read_dpo(out / "feedback.json"))
    assert len(pairs) == stats["pairs"]
    assert all(p["chosen"][:-1] == p["rejected"][:-1] and p["chosen"] != p["rejected"] for p in pairs)
    first = (out / "feedback.json").read_bytes()
    run(torchrun_cmd("feedback.py", 1, args), cwd=tmp_path)  # every sample is there: nothing regenerated
    assert (out / "feedback.json").read_bytes() == first

    dpo = tmp_path / "dpo"
    run(torchrun_cmd("dpo.py", 1, [*FAST, f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={dpo}",
                                   f"model.checkpoint={sft_run / 'final'}", f"data.train_files=[{out / 'feedback.json'}]",
                                   f"data.tokenizer={sft_run / 'final' / 'tokenizer.model'}", "max_steps=1",
                                   "global_batch_rows=2", "data.rows_per_micro_batch=2"]), cwd=tmp_path)
    assert metrics(dpo)[0]["step"] == 1
