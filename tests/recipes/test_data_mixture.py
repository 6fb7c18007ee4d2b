"""A mixture through the SFT recipe, in-process: the run's seed draws the capped file, and the
token cache's stats.json counts each input."""
import json

import pytest

from ie_engine.data.bundled import ensure_default_assets
from ie_engine.data.formats import count_records
from ie_engine.recipes import sft

from recipe_utils import FAST

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sft_trains_on_a_capped_mixture(tmp_path, cache_dir):
    assets = ensure_default_assets(str(cache_dir))
    mix = f"data.train_files=[{assets['sft']},{assets['prompts']}:20]"
    sft.main([*FAST, mix, f"data.tokenizer={assets['tokenizer']}", f"data.cache_dir={tmp_path / 'c'}",
              "data.eval_files=[]", f"output_dir={tmp_path / 'run'}", "max_steps=1", "seed=5"])
    stats = json.loads((tmp_path / "c" / "sft-seq256" / "stats.json").read_text())
    whole, capped = stats["per_input"]
    assert stats["seed"] == 5
    assert (whole["take"], whole["records"]) == ("all", count_records(assets["sft"]))
    assert (capped["take"], capped["records"], capped["file_records"]) == ("20", 20, count_records(assets["prompts"]))
    assert whole["tokens"] + capped["tokens"] == stats["tokens"]
