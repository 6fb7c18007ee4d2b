"""data/tokenizer.py: Llama-2 conventions and training settings (agreement with the Hugging Face
Llama tokenizer is tested through the chat template in test_template.py)."""
import pickle
from pathlib import Path

import pytest
import sentencepiece as spm

from ie_engine.data.formats import read_sft
from ie_engine.data.tokenizer import Tokenizer, train_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"


def corpus() -> list[str]:
    texts = [m["content"] for r in read_sft(FIXTURES / "sft_sample.jsonl") for m in r["messages"]]
    return texts + ["<|system|>\n<|user|>\n<|assistant|>\n", "The year 2024 had 366 days."] * 3


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return Tokenizer(train_tokenizer(corpus(), 400, tmp_path_factory.mktemp("tok") / "t.model"))


def test_llama2_conventions(tok):
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert [tok.sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert tok.sp.pad_id() == -1 and tok.pad_id == tok.unk_id  # no pad piece: pad with unk
    assert tok.vocab_size == 400 and tok.sp.get_piece_size() == 400
    assert tok.newline_is_boundary and tok.newline_len == 2
    assert tok.special_ids == {"<unk>": 0, "<s>": 1, "</s>": 2}


def test_encode_is_plain_sentencepiece(tok):
    text = "<|user|>\nEngine </s> of the boat"
    ids = tok.encode(text)
    assert tok.bos_id not in ids and tok.eos_id not in ids  # "</s>" stays text here
    pieces = tok.sp.id_to_piece(ids)
    assert pieces[0].startswith("▁")  # dummy prefix
    assert len(tok.encode("<|user|>")) > 1  # role markers are plain text, not symbols
    assert tok.encode_batch([text, "x"]) == [ids, tok.encode("x")]


def test_split_digits_and_byte_fallback(tok):
    pieces = tok.sp.id_to_piece(tok.encode("2024"))
    assert [p.lstrip("▁") for p in pieces if p.strip("▁")] == list("2024")
    rare = "Zürich 東京 🙂"
    ids = tok.encode(rare)
    assert tok.unk_id not in ids and any(tok.sp.is_byte(i) for i in ids)
    assert tok.decode(ids) == rare


@pytest.mark.parametrize("text", ["  leading and  double  spaces ", "tabs\tand\nnew\n\nlines\n",
                                  "[Answer]: (a; b; c)", ""])
def test_round_trip_keeps_whitespace(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_training_is_deterministic(tmp_path):
    a = train_tokenizer(corpus(), 350, tmp_path / "a.model")
    b = train_tokenizer(iter(corpus()), 350, tmp_path / "sub" / "b.model")
    assert Path(a).read_bytes() == Path(b).read_bytes()
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name != "b.model"]  # no tmp left


def test_pickle_reloads_from_path(tok):
    again = pickle.loads(pickle.dumps(tok))
    text = "Vienna 1999 Acme Labs"
    assert again.path == tok.path and again.encode(text) == tok.encode(text)


def test_newline_piece_disables_boundary(tmp_path):
    # A model whose vocabulary has a piece spanning "\n" must report it (the template then
    # falls back to its reference path).
    prefix = str(tmp_path / "nl")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_prefix=prefix, model_type="bpe", vocab_size=350,
        user_defined_symbols=[".\n<|"], byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    assert not Tokenizer(prefix + ".model").newline_is_boundary

