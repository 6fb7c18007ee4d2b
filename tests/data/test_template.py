"""data/template.py against the reference it must reproduce: open-instruct's
`encode_with_messages_format` run with the Hugging Face legacy (slow, sentencepiece) Llama
tokenizer, re-typed below from its algorithm. Both our paths (the literal `_ref` and the one-pass
`encode_conversation`) must give the same ids, and the same trained positions as its labels."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ie_engine.data.formats import read_sft
from ie_engine.data.template import encode_conversation, encode_conversation_ref, encode_pair, render
from ie_engine.data.tokenizer import Tokenizer, train_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "adelie_samples"


def hf_llama(model_path: str):
    """The slow Hugging Face Llama tokenizer in legacy mode, as ADELIE trained with."""
    pytest.importorskip("transformers")
    try:  # transformers 5.x keeps the sentencepiece backend under this name
        from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
        return SentencePieceBackend(vocab_file=model_path, legacy=True, bos_token="<s>",
                                    eos_token="</s>", unk_token="<unk>",
                                    special_tokens_pattern="bos")
    except ImportError:  # transformers 4.x
        from transformers import LlamaTokenizer
        return LlamaTokenizer(vocab_file=model_path, legacy=True)


def open_instruct_ref(hf, messages, max_seq_length=1 << 30):
    """open-instruct finetune.py `encode_with_messages_format` -> (input_ids, labels != -100)."""
    def concat(msgs):
        text = ""
        for m in msgs:
            if m["role"] == "assistant":
                text += "<|assistant|>\n" + m["content"].strip() + hf.eos_token + "\n"
            else:
                text += f"<|{m['role']}|>\n" + m["content"].strip() + "\n"
        return text

    def ids(text):
        return hf(text, max_length=max_seq_length, truncation=True)["input_ids"]

    input_ids = ids(concat(messages).strip())
    labels = np.array(input_ids)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            continue
        start = 0 if i == 0 else len(ids(concat(messages[:i])))
        so_far = concat(messages[: i + 1])
        if i < len(messages) - 1 and messages[i + 1]["role"] == "assistant":
            so_far += "<|assistant|>\n"
        end = len(ids(so_far))
        labels[start:end] = -100
        if end >= max_seq_length:
            break
    return input_ids, labels != -100


def corpus():
    texts = [m["content"] for r in read_sft(FIXTURES / "sft_sample.jsonl") for m in r["messages"]]
    return texts + ["<|system|>\n<|user|>\n<|assistant|>\n[Answer]: "] * 3


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer(train_tokenizer(corpus(), 400, tmp_path_factory.mktemp("t") / "t.model"))


@pytest.fixture(scope="module")
def hf(tok):
    return hf_llama(tok.path)


def check_against_reference(tok, hf, messages, max_len=None):
    ids, mask = encode_conversation(tok, messages, max_len)
    ref_ids, ref_mask = encode_conversation_ref(tok, messages, max_len)
    hf_ids, hf_trained = open_instruct_ref(hf, messages, max_len or 1 << 30)
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape
    assert ids.tolist() == hf_ids == ref_ids.tolist()
    # labels[0] (BOS) is never a target after the shift; we always mark it False.
    assert not mask[0] and mask[1:].tolist() == hf_trained[1:].tolist() == ref_mask[1:].tolist()


def fixture_conversations():
    return [r["messages"] for r in read_sft(FIXTURES / "sft_sample.jsonl")]


EDGE_CASES = [
    [{"role": "user", "content": "  padded \n\n"}, {"role": "assistant", "content": "\n\n  x  y \t"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
    [{"role": "system", "content": "sys"}, {"role": "user", "content": "a"},
     {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
    [{"role": "assistant", "content": "starts with an answer"}, {"role": "user", "content": "ok"}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"},
     {"role": "assistant", "content": "a2"}],
    [{"role": "user", "content": "ends with a question"}],
    [{"role": "user", "content": "q\n"}, {"role": "assistant", "content": "a"},
     {"role": "user", "content": "   "}],
    [{"role": "user", "content": "literal </s> and <s> and <unk> in text"},
     {"role": "assistant", "content": "answer </s>"}, {"role": "user", "content": "</s>"},
     {"role": "assistant", "content": "<s>tail"}],
]


@pytest.mark.parametrize("case", range(len(EDGE_CASES)))
def test_edge_cases_match_open_instruct(tok, hf, case):
    check_against_reference(tok, hf, EDGE_CASES[case])


def test_sample_shapes_match_open_instruct(tok, hf):
    convs = fixture_conversations()
    assert {len(c) for c in convs} >= {2, 3, 10}  # zero-shot, system + table, 5-turn few-shot
    for messages in convs:
        check_against_reference(tok, hf, messages)
        for max_len in (1, 7, 33, 101):
            check_against_reference(tok, hf, messages, max_len)


def random_conversation(rng):
    words = ["[Answer]:", "Vienna", "Acme", "2008", "person_scholar;", "|", "---", "Zürich",
             "東京", "\n", "\n\n", " ", "\t", "(a; b; c)", "</s>", "<s>", "<unk>", "<|user|>", "é"]
    turns = []
    for _ in range(rng.integers(1, 7)):
        role = rng.choice(["system", "user", "assistant", "assistant"])
        n = rng.integers(0, 12)
        sep = rng.choice(["", " "])
        turns.append({"role": str(role),
                      "content": sep.join(str(w) for w in rng.choice(words, n))})
    return turns


def test_random_conversations_match_open_instruct(tok, hf):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    for _ in range(150):
        messages = random_conversation(rng)
        try:
            check_against_reference(tok, hf, messages, int(rng.choice([0, 5, 40])) or None)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: {json.dumps(messages)}") from e


def test_rendered_text_and_mask_boundaries(tok):
    messages = [{"role": "system", "content": " Be brief. "},
                {"role": "user", "content": "Who? Ada met Alan.\n"},
                {"role": "assistant", "content": "[Answer]: Ada; Alan"},
                {"role": "user", "content": "Where?"},
                {"role": "assistant", "content": " Paris "}]
    text = render(messages)
    print(repr(text))
    assert text == ("<|system|>\nBe brief.\n<|user|>\nWho? Ada met Alan.\n"
                    "<|assistant|>\n[Answer]: Ada; Alan</s>\n<|user|>\nWhere?\n"
                    "<|assistant|>\nParis</s>")
    ids, mask = encode_conversation(tok, messages)
    # Trained runs: each assistant content + EOS; after a non-final EOS also its "▁", "\n".
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    runs = [ids[a:b].tolist() for a, b in zip(edges[::2], edges[1::2])]
    print([tok.sp.id_to_piece(r) for r in runs])
    assert len(runs) == 2
    newline = tok.encode("\n")
    assert runs[0][-3:] == [tok.eos_id] + newline and runs[1][-1] == tok.eos_id
    assert tok.decode(runs[0][:-3]) == "[Answer]: Ada; Alan"
    assert tok.decode(runs[1][:-1]) == "Paris"
    # Everything before the first answer is prompt: BOS, system, user and the assistant header.
    prompt = tok.decode(ids[1:edges[0]])
    assert prompt == "<|system|>\nBe brief.\n<|user|>\nWho? Ada met Alan.\n<|assistant|>\n"


def test_fallback_when_newline_is_not_a_boundary(tmp_path):
    import sentencepiece as spm
    prefix = str(tmp_path / "nl")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_prefix=prefix, model_type="bpe", vocab_size=350,
        user_defined_symbols=["\n<|"], byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    tok = Tokenizer(prefix + ".model")
    assert not tok.newline_is_boundary
    hf = hf_llama(tok.path)
    for messages in fixture_conversations()[:3]:
        check_against_reference(tok, hf, messages)


def test_encode_pair(tok):
    prompt = [{"role": "user", "content": "Extract the places: Ada met Alan in Paris."}]
    chosen = prompt + [{"role": "assistant", "content": "[Answer]: Paris"}]
    rejected = prompt + [{"role": "assistant", "content": "[Answer]: Ada"}]
    (ic, mc), (ir, mr) = encode_pair(tok, chosen, rejected)
    for got, want in (((ic, mc), encode_conversation(tok, chosen)),
                      ((ir, mr), encode_conversation(tok, rejected))):
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
    first = int(np.argmax(mc))
    assert first == int(np.argmax(mr)) and ic[:first].tolist() == ir[:first].tolist()


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="ADELIE sample files (../shared) not present")
def test_real_adelie_files(tmp_path):
    files = sorted((SAMPLES / "test_format").glob("**/*.jsonl"))
    assert files
    convs = {f: [r["messages"] for r in read_sft(f)] for f in files}
    text = [m["content"] for f in files for c in convs[f][:100] for m in c]
    tok = Tokenizer(train_tokenizer(text, 1000, tmp_path / "t.model"))
    hf = hf_llama(tok.path)
    for f in files:
        for k, messages in enumerate(convs[f]):
            ids, mask = encode_conversation(tok, messages)
            n_assistant = sum(m["role"] == "assistant" for m in messages)
            assert ids[0] == tok.bos_id and (ids == tok.eos_id).sum() == n_assistant, (f, k)
            assert mask[ids == tok.eos_id].all() and ids[-1] == tok.eos_id, (f, k)
            if k < 4:  # the literal O(turns^2) references are slow
                check_against_reference(tok, hf, messages)
                check_against_reference(tok, hf, messages, 300)
