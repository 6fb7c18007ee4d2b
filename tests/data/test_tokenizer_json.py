"""tokenizer.json (Llama-3 / Qwen2 byte-level BPE) through data/tokenizer.py: the same ids as the
Hugging Face fast tokenizer built from the same files, BOS/EOS/pad as the docstring chooses them,
the chat template against open-instruct's algorithm run with that HF tokenizer (both our paths),
the fallback when "\\n" is not a BPE boundary, and a token cache built with it."""
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_template import EDGE_CASES, open_instruct_ref  # the reference algorithm, typed once

from ie_engine.data.cache import TokenCache
from ie_engine.data.formats import read_dpo, read_sft
from ie_engine.data.prepare import prepare
from ie_engine.data.template import encode_conversation, encode_conversation_ref, encode_pair
from ie_engine.data.tokenizer import (Tokenizer, WordCacheTokenizer, find_tokenizer, tokenizer_sha256,
                                      train_byte_level_tokenizer, train_tokenizer)

transformers = pytest.importorskip("transformers")
FIXTURES = Path(__file__).parent / "fixtures"
STYLES = ("llama3", "qwen2")
SPECIALS = {"llama3": ["<|end_of_text|>", "<|begin_of_text|>", "<|eot_id|>"],
            "qwen2": ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]}


def corpus() -> list[str]:
    texts = [m["content"] for r in read_sft(FIXTURES / "sft_sample.jsonl") for m in r["messages"]]
    # multi-line text, so the BPE learns pieces that end in newlines (".\n", ">\n", "\n\n")
    return texts + ["<|system|>\n<|user|>\n<|assistant|>\n[Answer]: ", "One.\nTwo:\n\nThree (3).\n",
                    "Zürich 東京 café\n2024-05-06\n"] * 4


@pytest.fixture(scope="module", params=STYLES)
def tok_dir(request, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp(request.param)
    train_byte_level_tokenizer(corpus(), 600, d, request.param)
    return d


@pytest.fixture(scope="module")
def tok(tok_dir) -> Tokenizer:
    return Tokenizer(tok_dir)


@pytest.fixture(scope="module")
def hf(tok_dir):
    return transformers.AutoTokenizer.from_pretrained(str(tok_dir))


def test_conventions(tok, tok_dir):
    assert tok.kind == "tokenizers" and tok.path == str(tok_dir / "tokenizer.json")
    assert tok.vocab_size == 600
    if tok_dir.name.startswith("llama3"):
        assert (tok.bos_text, tok.eos_text) == ("<|begin_of_text|>", "<|end_of_text|>")
        assert tok.pad_id == tok.eos_id  # no pad token: pad with EOS
    else:
        assert tok.bos_id is None and tok.bos_text is None and tok.eos_text == "<|endoftext|>"
    assert tok.special_ids[tok.eos_text] == tok.eos_id and len(tok.special_ids) >= 3
    assert max(tok.special_ids.values()) == tok.vocab_size - 1  # added after the BPE vocabulary
    assert tok.newline_is_boundary and tok.newline_len == 1
    assert any("\n" in p and p.strip("\n") for p in map(tok.decode, ([i] for i in range(tok.vocab_size))))


def test_ids_are_the_hf_fast_tokenizers(tok, hf):
    texts = ["Hello world", " leading space", "<|user|>\nZürich.\n\n東京", "a" + SPECIALS["llama3"][0],
             "2024-05-06 12345", "tabs\tand  spaces  ", "", *SPECIALS["qwen2"]]
    for text in texts:
        assert tok.encode(text) == hf(text, add_special_tokens=False)["input_ids"], text
        full = hf(text)["input_ids"]
        assert full == ([] if tok.bos_id is None else [tok.bos_id]) + tok.encode(text), text
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert hf.eos_token == tok.eos_text


def test_pickles_by_path_and_word_cache_is_plain(tok):
    again = pickle.loads(pickle.dumps(tok))
    assert again.path == tok.path and again.encode("x y\nz") == tok.encode("x y\nz")
    cached = WordCacheTokenizer(tok.path)
    assert not cached.exact and cached.encode_batch(["a b", "c\n"]) == [tok.encode("a b"), tok.encode("c\n")]


def test_directory_resolution_prefers_sentencepiece(tmp_path, tok_dir):
    d = tmp_path / "ckpt"
    shutil.copytree(tok_dir, d)
    assert find_tokenizer(d) == str(d / "tokenizer.json")
    train_tokenizer(corpus(), 500, d / "tokenizer.model")  # Llama-2 repos ship both files
    assert find_tokenizer(d) == str(d / "tokenizer.model") and Tokenizer(d).kind == "sentencepiece"
    with pytest.raises(FileNotFoundError, match="tokenizer.model or tokenizer.json"):
        find_tokenizer(tmp_path)


def test_eos_bos_pad_come_from_the_side_files(tmp_path, tok_dir):
    d = tmp_path / "t"
    shutil.copytree(tok_dir, d)
    base = json.loads((d / "tokenizer_config.json").read_text())
    sha = tokenizer_sha256(d / "tokenizer.json")
    eot = "<|eot_id|>" if "<|eot_id|>" in Tokenizer(d).special_ids else "<|im_end|>"
    # an -Instruct model's config: another EOS, an explicit pad, no BOS
    (d / "tokenizer_config.json").write_text(json.dumps(
        {**base, "eos_token": {"content": eot, "special": True}, "pad_token": eot, "add_bos_token": False}))
    t = Tokenizer(d)
    assert (t.eos_text, t.pad_id, t.bos_id) == (eot, t.special_ids[eot], None)
    assert tokenizer_sha256(d / "tokenizer.json") != sha  # the cache fingerprint sees the change
    # no tokenizer_config.json: generation_config.json's (first) eos_token_id
    (d / "tokenizer_config.json").unlink()
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [t.special_ids[eot], 0]}))
    assert Tokenizer(d).eos_text == eot
    (d / "generation_config.json").unlink()
    with pytest.raises(ValueError, match="no EOS token"):
        Tokenizer(d)


def check_against_reference(tok, hf, messages, max_len=None):
    ids, mask = encode_conversation(tok, messages, max_len)
    ref_ids, ref_mask = encode_conversation_ref(tok, messages, max_len)
    hf_ids, hf_trained = open_instruct_ref(hf, messages, max_len or 1 << 30)
    assert ids.tolist() == hf_ids == ref_ids.tolist()
    assert not mask[0] and mask[1:].tolist() == hf_trained[1:].tolist() == ref_mask[1:].tolist()


def random_conversation(rng):
    words = ["[Answer]:", "Vienna", "Acme", "2008", "person_scholar;", "|", "---", "Zürich", "東京",
             "\n", "\n\n", " ", "\t", "(a; b; c)", ".\n", ":", "é", "<|user|>", "</s>",
             *SPECIALS["llama3"], *SPECIALS["qwen2"]]
    turns = []
    for _ in range(rng.integers(1, 7)):
        role = rng.choice(["system", "user", "assistant", "assistant"])
        sep = rng.choice(["", " "])
        turns.append({"role": str(role), "content": sep.join(str(w) for w in rng.choice(words, rng.integers(0, 12)))})
    return turns


def test_template_matches_open_instruct(tok, hf):
    for messages in EDGE_CASES + [r["messages"] for r in read_sft(FIXTURES / "sft_sample.jsonl")]:
        for max_len in (None, 1, 7, 40):
            check_against_reference(tok, hf, messages, max_len)
    seed = int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    for _ in range(150):
        messages = random_conversation(rng)
        try:
            check_against_reference(tok, hf, messages, int(rng.choice([0, 5, 40])) or None)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: {json.dumps(messages)}") from e


def test_fallback_when_newline_is_not_a_boundary(tmp_path):
    """A byte-level BPE without the regex split merges across newlines: the probe sees it and
    the template takes the reference path, which still matches open-instruct."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    raw = HFTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(["<|user|>\nhi\n<|assistant|>\nhello\n"] * 50 + corpus(), trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    raw.add_special_tokens(["<|endoftext|>"])
    raw.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "bos_token": None}))
    tok = Tokenizer(tmp_path)
    assert not tok.newline_is_boundary
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for messages in EDGE_CASES[:4] + [r["messages"] for r in read_sft(FIXTURES / "sft_sample.jsonl")][:2]:
        check_against_reference(tok, hf, messages)


def test_token_cache_with_a_byte_level_tokenizer(tmp_path, tok):
    """ie_engine.data.prepare runs unchanged: every cached document is the template's encoding."""
    sft = prepare("sft", [str(FIXTURES / "sft_sample.jsonl")], tok.path, 512, str(tmp_path / "sft"), workers=1)
    cache = TokenCache(tmp_path / "sft")
    assert cache.vocab_size == tok.vocab_size and cache.meta["bos_id"] == tok.bos_id
    assert cache.meta["eos_id"] == tok.eos_id and cache.meta["token_dtype"] == "uint16"
    records = list(read_sft(FIXTURES / "sft_sample.jsonl"))
    assert cache.num_examples > 0
    for i in range(cache.num_examples):
        [(ids, mask)] = cache.example(i)
        want_ids, want_mask = encode_conversation(tok, records[int(cache.example_record[i])]["messages"], 512)
        assert ids.tolist() == want_ids.tolist() and mask.tolist() == want_mask.tolist()
    dpo_file = str(FIXTURES / "dpo_prompt_form.jsonl")
    prepare("dpo", [dpo_file], tok.path, 512, str(tmp_path / "dpo"), workers=2)
    cache = TokenCache(tmp_path / "dpo")
    pairs = list(read_dpo(dpo_file))
    for i in range(cache.num_examples):
        got = cache.example(i)
        p = pairs[int(cache.example_record[i])]
        want = encode_pair(tok, p["chosen"], p["rejected"], 512)
        assert [g[0].tolist() for g in got] == [w[0].tolist() for w in want]
    assert sft is not None


SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "adelie_samples"


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="ADELIE sample files (../shared) not present")
@pytest.mark.parametrize("style", STYLES)
def test_real_adelie_files(tmp_path, style):
    files = sorted((SAMPLES / "test_format").glob("**/*.jsonl"))
    convs = {f: [r["messages"] for r in read_sft(f)] for f in files}
    train_byte_level_tokenizer([m["content"] for f in files for c in convs[f][:100] for m in c], 1000,
                               tmp_path, style)
    tok, hf = Tokenizer(tmp_path), transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.newline_is_boundary
    for f in files:
        for messages in convs[f][:3]:  # the literal O(turns^2) references are slow
            check_against_reference(tok, hf, messages)
            check_against_reference(tok, hf, messages, 300)
