"""data/bundled.py: deterministic, reusable, readable by our readers, answers grounded in the text,
rejected answers really corrupted, and the tokenizer trained on it round-trips."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from ie_engine.data import bundled
from ie_engine.data.bundled import ensure_default_assets
from ie_engine.data.formats import read_dpo, read_sft
from ie_engine.data.template import encode_conversation
from ie_engine.data.tokenizer import Tokenizer

FILES = ("sft", "dpo", "heldout", "heldout_dpo", "prompts", "tokenizer")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return ensure_default_assets(tmp_path_factory.mktemp("bundled"))


def test_same_seed_same_bytes(assets, tmp_path):
    again = ensure_default_assets(tmp_path / "again")
    for k in FILES:
        assert Path(again[k]).read_bytes() == Path(assets[k]).read_bytes(), k
    other = ensure_default_assets(tmp_path / "other", seed=1, n_sft=50, n_dpo=20, vocab_size=400)
    assert Path(other["sft"]).read_bytes() != Path(assets["sft"]).read_bytes()


def test_reused_when_complete_regenerated_when_not(tmp_path):
    small = dict(n_sft=60, n_dpo=20, vocab_size=400)
    paths = ensure_default_assets(tmp_path, **small)
    stamp = {k: os.stat(paths[k]).st_mtime_ns for k in FILES}
    content = {k: Path(paths[k]).read_bytes() for k in FILES}
    assert ensure_default_assets(tmp_path, **small) == paths
    assert {k: os.stat(paths[k]).st_mtime_ns for k in FILES} == stamp  # nothing rewritten
    Path(paths["sft"]).write_bytes(content["sft"][:100])  # an interrupted/corrupted file
    Path(paths["tokenizer"]).unlink()
    ensure_default_assets(tmp_path, **small)
    assert {k: Path(paths[k]).read_bytes() for k in FILES} == content
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["sft.jsonl", "dpo.json", "heldout.jsonl", "heldout_dpo.json", "prompts.jsonl", "tokenizer.model",
         "manifest.json"])  # no tmp files left


def answer_items(content: str) -> list[tuple[str, str]]:
    body = content.removeprefix("[Answer]: ")
    if body in ("No entities found", "No events found"):
        return []
    return [tuple(x.rsplit(": ", 1)) for x in body.rstrip(";").split("; ")]


def quoted_text(user: str) -> str:
    return re.search(r"[Tt]ext: '(.*?)'", user, re.S).group(1)


def expected_items(task: str, text: str, options: list[str]) -> list[tuple[str, str]]:
    """The gold answer recomputed from the text and the asked types, independently."""
    table = ([(v, k) for k, vs in bundled.SLOTS.items() for v in vs] if task == "ner" else
             [(t, k) for k, (ts, _) in bundled.EVENTS.items() for t in ts])
    found = [(m.start(), s, k) for s, k in table
             for m in re.finditer(rf"(?<![\w-]){re.escape(s)}(?![\w-])", text)]
    return [(s, k) for _, s, k in sorted(found) if k in options]


def test_sft_readable_and_answers_follow_from_text(assets):
    records = list(read_sft(assets["sft"]))
    assert len(records) == 3000
    tasks = {r["dataset"] for r in records}
    assert tasks == {"bundled-ner", "bundled-re", "bundled-ed", "bundled-chat"}
    n_fewshot = n_checked = 0
    for r in records:
        msgs = r["messages"]
        assert msgs[-1]["role"] == "assistant"
        task = r["dataset"].split("-")[1]
        users = [m for m in msgs if m["role"] == "user"]
        answers = [m for m in msgs if m["role"] == "assistant"]
        n_fewshot += task != "chat" and len(users) > 1
        if task not in ("ner", "ed"):
            continue
        options = re.search(r"types?:? \[(.*?)\]|categories: \[(.*?)\]", users[0]["content"])
        options = (options.group(1) or options.group(2)).split(", ")
        for u, a in zip(users, answers):
            want = expected_items(task, quoted_text(u["content"]), options)
            assert answer_items(a["content"]) == want, (r["id"], u["content"], a["content"])
            n_checked += 1
    assert n_fewshot > 300 and n_checked > 1500


def test_dpo_rejected_is_a_real_corruption(assets):
    raw = json.loads(Path(assets["dpo"]).read_text())
    pairs = list(read_dpo(assets["dpo"]))
    assert len(pairs) == len(raw) == 1000
    assert {r["corruption"] for r in raw} == {"wrong_type", "missing", "invented"}
    for r, p in zip(raw, pairs):
        c, j = p["chosen"], p["rejected"]
        assert c[:-1] == j[:-1] == r["messages"] and c[-1]["content"] != j[-1]["content"]
        text = quoted_text([m for m in c if m["role"] == "user"][-1]["content"])
        if r["dataset"] == "bundled-re":
            gold = re.fullmatch(r"\[Answer\]: \((.*); (.*); (.*)\)", c[-1]["content"]).groups()
            bad = re.fullmatch(r"\[Answer\]: \((.*); (.*); (.*)\)", j[-1]["content"]).groups()
            assert gold[0] in text and gold[2] in text
            if r["corruption"] == "wrong_type":
                assert bad[1] != gold[1] and (bad[0], bad[2]) == (gold[0], gold[2])
            else:
                assert bad[2] not in text
            continue
        gold, bad = answer_items(c[-1]["content"]), answer_items(j[-1]["content"])
        assert all(s in text for s, _ in gold)
        if r["corruption"] == "missing":
            assert len(bad) == len(gold) - 1 and all(b in gold for b in bad)
        elif r["corruption"] == "wrong_type":
            assert [s for s, _ in bad] == [s for s, _ in gold] and bad != gold
        else:
            extra = [b for b in bad if b not in gold]
            assert len(extra) == 1 and extra[0][0] not in text


def test_tokenizer_round_trips_and_lengths_fit(assets):
    tok = Tokenizer(assets["tokenizer"])
    assert tok.vocab_size == 2000 and tok.newline_is_boundary
    records = list(read_sft(assets["sft"]))
    for r in records[:500]:
        for m in r["messages"]:
            ids = tok.encode(m["content"])
            assert tok.unk_id not in ids and tok.decode(ids) == m["content"]
    lengths = np.array([len(encode_conversation(tok, r["messages"])[0]) for r in records])
    # mostly 60-300 tokens, nothing past the smallest planned seq_len of 256 by much
    assert 60 <= np.median(lengths) <= 300 and np.percentile(lengths, 95) <= 300
    assert lengths.max() <= 512


def test_heldout_and_prompt_pool_are_apart_from_training(assets):
    """No held-out or prompt-pool question occurs in the SFT or DPO training data, nor in each other;
    the held-out set holds NER, relation and event records, zero- and few-shot."""
    from ie_engine.data.bundled import prompt_key
    train = {prompt_key(r) for r in read_sft(assets["sft"])} | {prompt_key(r) for r in json.load(open(assets["dpo"]))}
    heldout = [json.loads(line) for line in open(assets["heldout"])]
    pool = [json.loads(line) for line in open(assets["prompts"])]
    held_keys, pool_keys = {prompt_key(r) for r in heldout}, {prompt_key(r) for r in pool}
    assert len(held_keys) == len(heldout) and len(pool_keys) == len(pool)
    assert not held_keys & train and not pool_keys & train and not held_keys & pool_keys
    assert {r["dataset"] for r in heldout} == {"bundled-ner", "bundled-re", "bundled-ed"}
    shots = {sum(m["role"] == "assistant" for m in r["messages"]) - 1 for r in heldout}
    assert 0 in shots and max(shots) >= 1
    pairs = json.load(open(assets["heldout_dpo"]))
    assert len(pairs) == len(heldout) and all(p["chosen"] != p["rejected"] for p in pairs)
