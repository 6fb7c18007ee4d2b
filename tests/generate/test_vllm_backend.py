"""generate.backend=vllm with vLLM's entry points stubbed (a fake `vllm` module): how our settings
map onto SamplingParams and LLM, one seeded request per sample, the same output files."""
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from ie_engine.engine.config import ConfigError
from ie_engine.engine.generate.config import GenerateSection
from ie_engine.engine.generate.files import encode_prompt, generate_files, prompt_messages
from ie_engine.engine.generate.sampling import sample_key
from ie_engine.engine.generate.vllm_backend import request_seed, sampling_kwargs
from ie_engine.engine.parallel import World

WORLD = World(0, 1, 0, torch.device("cpu"), "gloo")


def fake_vllm(eos_id: int):
    """A `vllm` module whose LLM records its arguments and answers from the request's seed."""
    calls = {"llm": [], "params": [], "prompts": []}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"].append(kwargs)

        def generate(self, prompts, params, use_tqdm=True):
            calls["prompts"] += prompts
            calls["params"] += [p.kwargs for p in params]
            outs = []
            for p, sp in zip(prompts, params):
                seed = sp.kwargs["seed"]
                ended = seed % 2 == 0
                ids = [5 + seed % 40, 6 + seed % 30] + ([eos_id] if ended else [7])
                outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(
                    token_ids=ids, finish_reason="stop" if ended else "length", text="ignored")]))
            return outs

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams), calls


def test_settings_map_onto_sampling_params():
    s = GenerateSection(n=5, temperature=1.0, top_p=0.9, top_k=0, max_new_tokens=2048, stop=["\n\n", "</s>"])
    assert sampling_kwargs(s, 1234, detokenize=True) == dict(
        n=1, temperature=1.0, top_p=0.9, top_k=-1, max_tokens=2048, seed=1234, stop=["\n\n", "</s>"],
        detokenize=True, skip_special_tokens=True)
    greedy = sampling_kwargs(GenerateSection(top_k=40), 1, detokenize=False)
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == 40 and greedy["stop"] is None
    lo, hi = sample_key(3, "ner", "17", 2)
    assert request_seed(3, ("ner", "17"), 2) == ((hi << 32) | lo) & (2**63 - 1)
    assert len({request_seed(0, ("d", "1"), s) for s in range(5)}) == 5


def test_vllm_backend_writes_the_same_files(tmp_path, bundled, tokenizer, checkpoint, monkeypatch):
    module, calls = fake_vllm(tokenizer.eos_id)
    monkeypatch.setitem(sys.modules, "vllm", module)
    src = tmp_path / "in.jsonl"
    records = [json.loads(line) for line in Path(bundled["sft"]).read_text().splitlines()[:4]]
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    settings = GenerateSection(n=3, temperature=1.0, top_p=0.95, top_k=20, max_new_tokens=64, backend="vllm",
                               stop=["zzz"])
    [out] = generate_files(settings, str(checkpoint), tokenizer, [src], tmp_path / "out", WORLD, seed=9)
    [llm] = calls["llm"]
    assert llm == dict(model=str(checkpoint), tensor_parallel_size=1, dtype="bfloat16", seed=9,
                       enable_prefix_caching=True, skip_tokenizer_init=False)
    assert len(calls["params"]) == 12 and all(p["n"] == 1 and p["top_k"] == 20 and p["max_tokens"] == 64
                                              and p["stop"] == ["zzz"] for p in calls["params"])
    want_prompts = {tuple(encode_prompt(tokenizer, prompt_messages(r["messages"], "x"))) for r in records}
    assert {tuple(p["prompt_token_ids"]) for p in calls["prompts"]} == want_prompts
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12
    for j, row in enumerate(rows):
        rec = records[j // 3]
        seed = request_seed(9, (rec["dataset"], rec["id"]), j % 3)
        ended = seed % 2 == 0
        assert row["sample_index"] == j % 3 and row["finish_reason"] == ("stop" if ended else "length")
        assert row["num_tokens"] == 3
        assert row["output"] == tokenizer.decode([5 + seed % 40, 6 + seed % 30] + ([] if ended else [7]))


def test_missing_vllm_is_a_clear_error(tmp_path, bundled, tokenizer, checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    src = tmp_path / "in.jsonl"
    src.write_text(Path(bundled["sft"]).read_text().splitlines()[0] + "\n")
    with pytest.raises(ConfigError, match="generate.backend=vllm needs vLLM installed"):
        generate_files(GenerateSection(backend="vllm"), str(checkpoint), tokenizer, [src], tmp_path / "o", WORLD)
