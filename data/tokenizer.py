"""Tokenizers: Llama-2's sentencepiece `tokenizer.model`, and the byte-level BPE `tokenizer.json`
of Llama-3.x and Qwen2.5 (read with Hugging Face's `tokenizers`), behind one interface; a trainer
for small ones of each kind.

`Tokenizer(path)` picks the backend by the file (a directory: its tokenizer.model if it has one,
else its tokenizer.json; Llama-2 checkpoints ship both and ADELIE trained with the sentencepiece
one). Both give vocab_size, bos_id (None when the tokenizer adds no BOS: Qwen), eos_id and
eos_text (the EOS the chat template writes after each assistant turn), pad_id, special_ids
(strings the Hugging Face tokenizer splits out of text as their own ids), encode, encode_batch,
decode, and pickle by path.

sentencepiece (Llama-2 conventions): BOS 1, EOS 2, UNK 0 and no pad piece (`pad_id` falls back to
UNK: pad positions are never trained, any valid id will do). `encode(text)` is plain
sentencepiece: it adds the dummy-prefix "▁" and never BOS/EOS, and the text "</s>" stays text. The
chat template (data/template.py) is what gives "</s>" in a rendered conversation its special
meaning, the way the Hugging Face Llama tokenizer does.

tokenizer.json (what transformers' fast tokenizer does with the same files, as open-instruct
called it): `encode(text)` is the backend's encode without the post-processor, so added tokens in
the text become their ids (transformers splits them out the same way) and no BOS is added;
special_ids are all the added tokens. BOS is what the post-processor puts in front (Llama-3:
<|begin_of_text|>; Qwen: nothing), unless tokenizer_config.json sets add_bos_token. EOS is
tokenizer_config.json's eos_token (open-instruct writes `tokenizer.eos_token`: <|end_of_text|> for
the Llama-3.2 base models, <|eot_id|> for -Instruct; <|endoftext|> for Qwen2.5 base, <|im_end|> for
-Instruct), else generation_config.json's (first) eos_token_id; pad is tokenizer_config.json's
pad_token, else EOS. Those two side files are read from the tokenizer.json's directory and are
part of `tokenizer_sha256`.

`newline_is_boundary` says whether "\n" is a hard BPE boundary, which lets data/template.py
tokenize a conversation one message at a time and still get the ids of tokenizing it whole.
sentencepiece: no piece spans a newline and the normaliser keeps it (Llama-2's model and every
model `train_tokenizer` writes). Byte-level BPE: Llama-3's and Qwen's vocabularies do hold pieces
like ".\n", but their pre-tokenizer ends a pre-token after a run of newlines followed by a
non-space, and BPE never merges across pre-tokens; that is probed at load (`_NL_PROBES`). Where it
fails, the template takes its exact reference path.

`WordCacheTokenizer(path)` gives the same ids, memoised per word (what data/prepare.py's workers
use: 2.5-4x faster on real text; exactness argued in its docstring and probed at load); for a
tokenizer.json it is the plain tokenizer (the Rust backend is fast already).

`train_tokenizer(texts, vocab_size, out_path)` trains a BPE model with Llama-2's settings
(byte fallback, split digits, dummy prefix, identity normalisation with whitespace kept as is,
ids 0/1/2 for unk/bos/eos, no pad), single-threaded so the same input gives the same bytes.
`train_byte_level_tokenizer(texts, vocab_size, out_dir, style)` writes a small Llama-3- or
Qwen2-style tokenizer.json + tokenizer_config.json (their pre-tokenizer, special tokens, BOS rule).
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from ie_engine.data.files import write_atomic
from ie_engine.data.formats import DataError

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")  # in a checkpoint directory, first found wins
SIDE_FILES = ("tokenizer_config.json", "generation_config.json")  # read beside a tokenizer.json

# (text before "\n", text after it): a message's last character / a header, then what can follow
_NL_PROBES = [(a, b) for a in ("<|user|>", "x", "7", ".", "é", "中", "a\n", ":", ")")
              for b in ("<|assistant|>", "x", "7", ".", "é", "中", "'s", "-", "\u0301", "(")]


def find_tokenizer(path: str | os.PathLike) -> str:
    """A tokenizer file: `path` itself, or the tokenizer.model / tokenizer.json in directory `path`."""
    path = Path(path)
    if not path.is_dir():
        return str(path)
    for name in TOKENIZER_FILES:
        if (path / name).exists():
            return str(path / name)
    raise FileNotFoundError(f"{path}: no {' or '.join(TOKENIZER_FILES)}")


def tokenizer_sha256(path: str | os.PathLike) -> str:
    """sha256 of everything a Tokenizer reads: the file (for a tokenizer.model, just its sha256),
    then for a tokenizer.json each side file present, by name."""
    path = Path(find_tokenizer(path))
    h = hashlib.sha256()
    for i, f in enumerate([path] + ([path.parent / f for f in SIDE_FILES] if path.suffix == ".json" else [])):
        if f.exists():
            if i:
                h.update(b"\0" + f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def _side_token(value) -> str | None:
    # tokenizer_config.json holds a token as a string or as a serialised AddedToken
    return value.get("content") if isinstance(value, dict) else value


class Tokenizer:
    def __init__(self, model_path: str | os.PathLike):
        self.path = find_tokenizer(model_path)
        if not os.path.isfile(self.path):
            raise DataError(f"tokenizer file not found: {self.path}")
        self.kind = "tokenizers" if self.path.endswith(".json") else "sentencepiece"
        self.sp = self.hf = None
        if self.kind == "tokenizers":
            self._load_json()
        else:
            self._load_sentencepiece()

    def _load_sentencepiece(self) -> None:
        try:
            self.sp = spm.SentencePieceProcessor(model_file=self.path)
        except (OSError, RuntimeError) as e:  # sentencepiece's parse error
            raise DataError(f"{self.path}: not a sentencepiece model ({e})") from None
        self.vocab_size: int = self.sp.get_piece_size()
        self.bos_id: int | None = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.unk_id: int | None = self.sp.unk_id()
        self.pad_id: int = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.unk_id
        if min(self.bos_id, self.eos_id) < 0:
            raise DataError(f"{self.path}: tokenizer has no BOS or EOS piece")
        self.bos_text: str | None = self.sp.id_to_piece(self.bos_id)
        self.eos_text: str = self.sp.id_to_piece(self.eos_id)
        # The Hugging Face Llama tokenizer splits these strings out of text as added tokens.
        self.special_ids: dict[str, int] = {
            self.sp.id_to_piece(i): i for i in (self.unk_id, self.bos_id, self.eos_id) if i >= 0
        }
        self.newline_is_boundary: bool = self._newline_is_boundary()
        # Number of ids "\n" alone encodes to (dummy "▁" + newline byte: 2 for Llama-2; byte-level: 1).
        self.newline_len: int = len(self.sp.encode("\n"))

    def _newline_is_boundary(self) -> bool:
        if self.sp.decode(self.sp.encode("a\nb")) != "a\nb":
            return False  # the normaliser rewrites newlines
        for i in range(self.vocab_size):
            if self.sp.is_byte(i) or self.sp.is_control(i) or self.sp.is_unknown(i):
                continue
            piece = self.sp.id_to_piece(i)
            if "\n" in piece and piece != "\n":
                return False
        return True

    def _load_json(self) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.hf = HFTokenizer.from_file(self.path)
        side = {}
        for name in SIDE_FILES:
            f = Path(self.path).parent / name
            side[name] = json.loads(f.read_text()) if f.exists() else {}
        tcfg, gcfg = side["tokenizer_config.json"], side["generation_config.json"]
        self.vocab_size = max(self.hf.get_vocab(with_added_tokens=True).values()) + 1
        self.special_ids = {t.content: i for i, t in self.hf.get_added_tokens_decoder().items()}
        self.unk_id = None
        # BOS: what the post-processor adds around "a" (a prefix of at most one id, no suffix)
        plain = self.hf.encode("a", add_special_tokens=False).ids
        full = self.hf.encode("a", add_special_tokens=True).ids
        k = next((k for k in range(len(full) - len(plain) + 1) if full[k:k + len(plain)] == plain), None)
        if k is None or k > 1 or len(full) != k + len(plain):
            raise ValueError(f"{self.path}: the post-processor adds {full} around {plain}; "
                             "only a single BOS in front is supported")
        self.bos_id = full[0] if k else None
        if "add_bos_token" in tcfg:
            bos = _side_token(tcfg.get("bos_token"))
            self.bos_id = self.hf.token_to_id(bos) if tcfg["add_bos_token"] and bos else None
        eos = _side_token(tcfg.get("eos_token"))
        if eos is None and gcfg.get("eos_token_id") is not None:
            ids = gcfg["eos_token_id"]
            eos = self.hf.id_to_token(ids[0] if isinstance(ids, list) else ids)
        if eos is None or self.hf.token_to_id(eos) is None:
            raise ValueError(f"{self.path}: no EOS token: set eos_token in tokenizer_config.json "
                             "(or eos_token_id in generation_config.json) beside it")
        self.eos_text, self.eos_id = eos, self.hf.token_to_id(eos)
        self.special_ids.setdefault(eos, self.eos_id)
        self.bos_text = None if self.bos_id is None else self.hf.id_to_token(self.bos_id)
        pad = _side_token(tcfg.get("pad_token"))
        self.pad_id = self.hf.token_to_id(pad) if pad and self.hf.token_to_id(pad) is not None else self.eos_id
        enc = lambda t: self.hf.encode(t, add_special_tokens=False).ids  # noqa: E731
        self.newline_len = len(enc("\n"))
        self.newline_is_boundary = self.hf.decode(enc("a\nb")) == "a\nb" and all(
            enc(a + "\n" + b) == enc(a + "\n") + enc(b) and enc("\n" + b) == enc("\n") + enc(b)
            for a, b in _NL_PROBES)

    def encode(self, text: str) -> list[int]:
        if self.sp is not None:
            return self.sp.encode(text)
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """One sentencepiece call for many strings (same ids as `encode` on each). Single-threaded:
        parallelism belongs to the caller's worker processes, not to threads inside each call
        (the `tokenizers` batch call would start a thread pool: one encode per text instead)."""
        if self.sp is not None:
            return self.sp.encode(texts, num_threads=1)
        return [self.hf.encode(t, add_special_tokens=False).ids for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        if self.sp is not None:
            return self.sp.decode([int(i) for i in ids])
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    # Worker processes get a tokenizer by pickling: reload from the file, not the native object.
    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size})"


def _lines(texts: Iterable[str]) -> Iterable[str]:
    # sentencepiece trains on sentences = lines; feeding newlines would let "\n" into pieces and
    # break `newline_is_boundary`.
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


def train_tokenizer(text_iter: Iterable[str], vocab_size: int, out_path: str | os.PathLike) -> str:
    """Train a Llama-2-like BPE sentencepiece model on `text_iter`; write it atomically."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_lines(text_iter)),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.99995,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        max_sentence_length=1 << 16,
        num_threads=1,  # deterministic output
        minloglevel=2,
    )
    write_atomic(out_path, buf.getvalue())
    return str(out_path)


# Llama-3's and Qwen2's pre-tokenizer patterns (their tokenizer.json; Qwen splits digits singly).
_BYTE_LEVEL_STYLES = {
    "llama3": {
        "pattern": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                    "<|eot_id|>"],
        "config": {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}},
    "qwen2": {
        "pattern": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "config": {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}},
}


def train_byte_level_tokenizer(text_iter: Iterable[str], vocab_size: int, out_dir: str | os.PathLike,
                               style: str = "llama3") -> str:
    """Train a small byte-level BPE laid out like Llama-3's ("llama3": BOS <|begin_of_text|> added
    by the post-processor, EOS <|end_of_text|>) or Qwen2's ("qwen2": NFC, no BOS, EOS
    <|endoftext|>): their pre-tokenizer, special tokens after the BPE vocabulary. Writes
    out_dir/tokenizer.json and tokenizer_config.json; returns the tokenizer.json path."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from tokenizers import Tokenizer as HFTokenizer

    spec = _BYTE_LEVEL_STYLES[style]
    tok = HFTokenizer(models.BPE(ignore_merges=style == "llama3"))
    tok.normalizer = normalizers.NFC() if style == "qwen2" else None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    n_special = len(spec["special"])
    tok.train_from_iterator(text_iter, trainers.BpeTrainer(
        vocab_size=vocab_size - n_special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.add_special_tokens(spec["special"])
    byte_level = processors.ByteLevel(trim_offsets=False)
    if spec["config"]["bos_token"]:
        bos = spec["config"]["bos_token"]
        tok.post_processor = processors.Sequence([byte_level, processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])])
    else:
        tok.post_processor = byte_level
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", **spec["config"],
         "clean_up_tokenization_spaces": False, "model_max_length": 1 << 17}, indent=2))
    return str(out_dir / "tokenizer.json")


# ----------------------------------------------------------------------------- word cache

_WS = "\u2581"  # sentencepiece's escaped space
_WORD = re.compile(_WS + "+[^" + _WS + "]*")  # a run of spaces and the characters up to the next
_PROBES = ("  a  b ", " x", "x ", "y\n z", "\t1 23 ", "ﬁ ① Ａ e\u0301 \u00a0x", "a\u2581b", "\u2581 c")


class WordCacheTokenizer(Tokenizer):
    """Tokenizer whose encode / encode_batch memoise sentencepiece per word: same ids, 2.5-4x faster.

    Why it is exact: sentencepiece escapes spaces to "▁" and adds one in front (dummy prefix);
    a piece may hold "▁" only as a prefix or be all "▁" (the check below reads the vocabulary),
    so no BPE merge crosses the point before a "▁" that follows another character. The text
    therefore splits into words "▁+[^▁]*" that are tokenized independently, and a word's ids are
    those of the word on its own. ADELIE text is Zipfian, so after a few thousand conversations
    almost every word is a dict hit instead of a BPE run. Requires the identity normaliser with
    whitespace kept (Llama-2's and `train_tokenizer`'s); `exact` is False otherwise and every
    call goes to sentencepiece unchanged. Probed at construction against sentencepiece itself.
    """

    MAX_WORDS = 1 << 19  # memo entries before it is cleared (~100 MB per worker at most)

    def __init__(self, model_path: str | os.PathLike):
        super().__init__(model_path)
        self._memo: dict[str, list[int]] = {}
        if self.sp is None:  # a tokenizer.json: no dummy-prefix words to cache by
            self.exact = False
            return
        self._a = self.sp.encode("a")
        # identity normaliser, spaces kept (decode undoes encode; "▁" in text decodes as " ")
        self.exact = self._pieces_stay_in_words() and all(
            self.sp.decode(self.sp.encode(t)) == t.replace(_WS, " ")
            and self.encode(t) == self.sp.encode(t) for t in _PROBES)
        self._memo.clear()

    def _pieces_stay_in_words(self) -> bool:
        sp = self.sp
        for i in range(self.vocab_size):
            if sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i):
                continue
            if _WS in sp.id_to_piece(i).lstrip(_WS):
                return False
        return True

    def _word_ids(self, w: str) -> list[int]:
        """sentencepiece ids of one word: "▁▁foo" is tokenized as " foo" (sentencepiece adds the
        first "▁", the dummy prefix); an all-space word, only ever a text's tail, after an "a"
        whose ids are then dropped. One call per word: a list call costs ~50 us of thread set-up."""
        if w.strip(_WS):
            return self.sp.encode(w[1:].replace(_WS, " "))
        return self.sp.encode("a" + " " * len(w))[len(self._a):]

    def _encode_words(self, text: str) -> list[int]:
        if not text:
            return []
        words = _WORD.findall(_WS + text.replace(" ", _WS))
        memo = self._memo
        try:  # all hits (the common case): one C-level pass
            return list(itertools.chain.from_iterable(map(memo.__getitem__, words)))
        except KeyError:
            pass
        if len(memo) > self.MAX_WORDS:
            memo.clear()
        out: list[int] = []
        for w in words:
            ids = memo.get(w)
            if ids is None:
                ids = memo[w] = self._word_ids(w)
            out += ids
        return out

    def encode(self, text: str) -> list[int]:
        # `exact` is not set yet while __init__ probes the word path itself
        return self._encode_words(text) if getattr(self, "exact", True) else super().encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not self.exact:
            return super().encode_batch(texts)
        return [self._encode_words(t) for t in texts]
