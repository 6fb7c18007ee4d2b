"""Files in, files out: prompts token for token as training rendered them, output layout, resume
after a failure without duplicates, bad input reported (FILE:LINE or the key) before any model."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ie_engine.data.template import encode_conversation
from ie_engine.data.tokenizer import Tokenizer
from ie_engine.engine.config import ConfigError
from ie_engine.engine.generate.config import GenerateSection
from ie_engine.engine.generate.files import encode_prompt, generate_files, prompt_messages, read_prompts
from ie_engine.engine.generate.generator import build_generation_model
from ie_engine.engine.parallel import World
from ie_engine.recipes import generate as recipe

pytestmark = pytest.mark.usefixtures("one_thread")
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "adelie_samples" / "test_format"
LLAMA2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "llama2_tokenizer" / "tokenizer.model"
WORLD = World(0, 1, 0, torch.device("cpu"), "gloo")


def check_prefix(tok, messages, where):
    """The prompt is what training saw before the final answer, token for token."""
    ids, trained = encode_conversation(tok, messages)
    prompt = encode_prompt(tok, prompt_messages(messages, where))
    if messages[-1]["role"] == "assistant":
        k = len(prompt)
        assert ids[:k].tolist() == prompt, where
        assert not trained[k - 1] and trained[k:].all(), where  # the answer (and EOS) follow
    assert tok.decode(prompt[-3:]).endswith("<|assistant|>") or prompt[-1] == tok.encode("\n")[-1]


@pytest.mark.skipif(not (SAMPLES.is_dir() and LLAMA2.is_file()), reason="ADELIE samples / Llama-2 tokenizer absent")
def test_llama2_prompts_are_the_training_prefix_of_the_sample_files():
    tok = Tokenizer(LLAMA2)
    files = sorted(SAMPLES.rglob("*.jsonl"))
    assert files
    for path in files:
        for i, line in enumerate(path.read_text().splitlines()[:40]):
            check_prefix(tok, json.loads(line)["messages"], f"{path}:{i + 1}")


def test_bundled_prompts_are_the_training_prefix(bundled, tokenizer):
    for i, line in enumerate(Path(bundled["sft"]).read_text().splitlines()[:200]):
        check_prefix(tokenizer, json.loads(line)["messages"], f"sft.jsonl:{i + 1}")
    # a record without a final answer is all prompt: the same ids as with one
    msgs = json.loads(Path(bundled["sft"]).read_text().splitlines()[0])["messages"]
    assert encode_prompt(tokenizer, prompt_messages(msgs[:-1], "x")) == encode_prompt(tokenizer, prompt_messages(msgs, "x"))


def write_inputs(tmp_path: Path, bundled) -> list[Path]:
    lines = Path(bundled["sft"]).read_text().splitlines()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    recs = [json.loads(line) for line in lines[:9]]
    recs[2]["id"] = recs[1]["id"]  # a repeated id is still one prompt of its own
    recs[3]["messages"] = recs[3]["messages"][:-1]  # no gold answer: all prompt
    recs[4] = {"datasets": "plural", "id": 7, "extra": [1, {"x": "ü"}], "messages": recs[4]["messages"]}
    a.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs[:6]))
    b.write_text(json.dumps([json.loads(line) for line in lines[20:24]]))  # a JSON array file
    return [a, b]


def test_outputs_resume_after_a_failure_without_duplicates(tmp_path, bundled, tokenizer, checkpoint):
    files = write_inputs(tmp_path, bundled)
    model = build_generation_model(str(checkpoint), torch.device("cpu"), torch.float32)
    settings = GenerateSection(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, batch_size=2)
    whole = generate_files(settings, model, tokenizer, files, tmp_path / "whole", WORLD, seed=3)

    class Killed(Exception):
        pass

    def fail_after_first_write(lines):
        raise Killed

    with pytest.raises(Killed):
        generate_files(settings, model, tokenizer, files, tmp_path / "resumed", WORLD, seed=3,
                       on_write=fail_after_first_write)
    part = tmp_path / "resumed" / "parts" / "rank-00000.jsonl"
    first = part.read_text().splitlines()
    assert 0 < len(first) < 30
    with open(part, "a") as f:
        f.write('{"file": "a.jsonl", "id": "cut sh')  # a line a SIGKILL cut short
    written = []
    resumed = generate_files(settings, model, tokenizer, files, tmp_path / "resumed", WORLD, seed=3,
                             on_write=written.extend)
    assert len(written) == 30 - len(first)  # only what was missing was generated
    keys = [(d["file"], d["id"], d["sample_index"]) for d in map(json.loads, part.read_text().splitlines())]
    assert len(keys) == len(set(keys)) == 30
    for w, r in zip(whole, resumed):
        assert w.read_text() == r.read_text()
    # layout: input order, n lines per record, the record unchanged plus the four fields
    inputs = [json.loads(line) for line in files[0].read_text().splitlines()]
    outputs = [json.loads(line) for line in whole[0].read_text().splitlines()]
    assert len(outputs) == 3 * len(inputs)
    for j, out in enumerate(outputs):
        rec = {k: v for k, v in out.items() if k not in ("output", "sample_index", "finish_reason", "num_tokens")}
        assert rec == inputs[j // 3] and out["sample_index"] == j % 3
        assert out["finish_reason"] in ("stop", "length") and 1 <= out["num_tokens"] <= 12
    assert len(whole[1].read_text().splitlines()) == 12
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["samples"] == 30 and summary["prompts"] == 10


def test_other_settings_in_the_same_output_dir_are_refused(tmp_path, bundled, tokenizer, checkpoint):
    files = write_inputs(tmp_path, bundled)[:1]
    model = build_generation_model(str(checkpoint), torch.device("cpu"), torch.float32)
    generate_files(GenerateSection(max_new_tokens=4), model, tokenizer, files, tmp_path / "o", WORLD)
    with pytest.raises(ConfigError, match="temperature"):
        generate_files(GenerateSection(max_new_tokens=4, temperature=1.0), model, tokenizer, files, tmp_path / "o", WORLD)


def bad_file(tmp_path, record) -> Path:
    good = {"dataset": "x", "id": 1, "messages": [{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": "[Answer]: none"}]}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    return path


@pytest.mark.parametrize("record,match", [
    ({"id": 2, "messages": []}, r"bad\.jsonl:2: messages: expected a non-empty list"),
    ({"id": 2, "messages": [{"role": "system", "content": "be brief"}, {"role": "assistant", "content": "x"}]},
     r"bad\.jsonl:2: messages: no user turn"),
    ({"id": 2, "messages": [{"role": "user", "content": 3}]}, r"bad\.jsonl:2: messages\[0\]\.content"),
])
def test_bad_records_name_file_and_line_before_the_model(tmp_path, checkpoint, monkeypatch, record, match):
    monkeypatch.setattr(recipe, "generation_model", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(ConfigError, match=match):
        recipe.main([f"model.checkpoint={checkpoint}", f"data.files=[{bad_file(tmp_path, record)}]",
                     f"output_dir={tmp_path / 'out'}"])


def test_bad_checkpoint_and_tokenizer_are_config_errors(tmp_path, checkpoint, bundled, monkeypatch):
    monkeypatch.setattr(recipe, "generation_model", lambda *a, **k: pytest.fail("the model was built"))
    args = [f"output_dir={tmp_path / 'out'}", f"data.cache_dir={Path(bundled['sft']).parent}"]
    with pytest.raises(ConfigError, match=r"model\.checkpoint: .*nowhere does not exist"):
        recipe.main([f"model.checkpoint={tmp_path / 'nowhere'}", *args])
    with pytest.raises(ConfigError, match=r"model\.checkpoint: generation needs"):
        recipe.main(["model.checkpoint=", *args])
    other = tmp_path / "other.model"
    from ie_engine.data.tokenizer import train_tokenizer
    train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 50, 300, other)
    with pytest.raises(ConfigError, match=r"data\.tokenizer: .*other\.model has \d+ pieces but model\.checkpoint"):
        recipe.main([f"model.checkpoint={checkpoint}", f"data.tokenizer={other}", *args])
    with pytest.raises(ConfigError, match=r"data\.files: .*missing\.jsonl does not exist"):
        recipe.main([f"model.checkpoint={checkpoint}", f"data.files=[{tmp_path / 'missing.jsonl'}]", *args])


def test_config_keys_are_checked_at_parse_time():
    from ie_engine.engine.config import parse_config
    for arg, match in [("generate.top_p=0", "generate.top_p"), ("generate.n=0", "generate.n"),
                       ("generate.temperature=-1", "generate.temperature"), ("generate.stop=['']", "generate.stop"),
                       ("generate.backend=hf", "generate.backend"), ("generate.tensor_parallel=2", "tensor_parallel"),
                       ("data.files=[x/a.jsonl,y/a.jsonl]", "data.files")]:
        with pytest.raises(ConfigError, match=match):
            parse_config(recipe.CONFIG, ["model.checkpoint=x", arg])


def test_vllm_runs_in_one_process(monkeypatch):
    from ie_engine.engine.config import parse_config
    parse_config(recipe.CONFIG, ["model.checkpoint=x", "generate.backend=vllm", "generate.tensor_parallel=4"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="launch one process"):
        parse_config(recipe.CONFIG, ["model.checkpoint=x", "generate.backend=vllm"])


def test_prompts_longer_than_the_model_are_reported(tmp_path, tokenizer):
    path = bad_file(tmp_path, {"id": 2, "messages": [{"role": "user", "content": "word " * 200}]})
    with pytest.raises(ConfigError, match=r"bad\.jsonl:2: the prompt is \d+ tokens"):
        read_prompts([path], tokenizer, max_seq_len=64)
    assert np.array(read_prompts([path], tokenizer, max_records=1)[0].ids).size > 0
