"""Tulu / ADELIE chat template: messages -> (token ids, target mask), exactly as open-instruct trains.

The text (open-instruct `_concat_messages`, then `.strip()` of the whole):

    <|system|>\\n{content}\\n                 each message's content is `.strip()`ped first
    <|user|>\\n{content}\\n
    <|assistant|>\\n{content}</s>\\n          "</s>" is the EOS token

and ids = [BOS] + the Hugging Face legacy Llama tokenization of that text: the text is split at
the strings "<unk>", "<s>", "</s>" (each becomes its special id, also inside a message's content)
and every piece between them is encoded by sentencepiece separately, so each piece gets its own
dummy-prefix "▁" (the "\\n" after an EOS becomes "▁", "\\n").

What is trained (open-instruct masks labels[start:end] for every non-assistant message, where
start/end are token counts of the tokenized prefix texts; `encode_conversation_ref` does that
literally). Worked out, target_mask is True on:
  - each assistant message's content tokens and its EOS;
  - the "▁", "\\n" after an EOS that is not the last token (open-instruct's next mask starts after
    the tokenized prefix, which ends in "</s>\\n");
  - an "<|assistant|>\\n" header that does not follow a system/user message (conversation starts
    with, or repeats, an assistant turn): no mask covers it.
False on BOS, every system/user message (header, content, trailing "\\n") and the
"<|assistant|>\\n" header after it. Position 0 (BOS) is always False: nothing predicts it.

Other families (tokenizer.json, data/tokenizer.py): the template stays this Tulu text, as ADELIE
trained its Llama-3.2 and Qwen2.5 models with open-instruct; what changes comes from the
tokenizer: the EOS text after each assistant turn is `tok.eos_text` (the tokenizer_config.json
eos_token that open-instruct's `tokenizer.eos_token` is), BOS is `tok.bos_id` or nothing (Qwen),
the strings split out of the text are `tok.special_ids` (all added tokens), and a piece is encoded
without a dummy prefix (byte-level BPE has none). Position 0 is never trained either way. One
quirk shows only there: for a conversation that ends with a system/user turn, open-instruct's last
mask ends at the token count of the text with its final "\n", which a byte-level BPE can merge
into the last token ("|>\n" is one piece); the positions past that count stay trained, as there.

Speed: `encode_conversation` runs sentencepiece once per message piece (one batched call per
conversation) instead of re-tokenizing every prefix. It is exact because "\\n" is a hard BPE
boundary (no piece contains it; `Tokenizer.newline_is_boundary`), every piece boundary falls
right after a "\\n" or at a special token, and a piece after a "\\n" is encoded as "\\n" + piece with
the newline's ids dropped (no second dummy prefix). Tokenizers without that property use the
reference. tests/data/test_template.py checks both against the Hugging Face tokenizer.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ie_engine.data.formats import ROLES, DataError
from ie_engine.data.tokenizer import Tokenizer

EOS_TEXT = "</s>"


def _concat_messages(messages: Sequence[dict], eos: str = EOS_TEXT) -> str:
    text = ""
    for m in messages:
        role, content = m["role"], m["content"].strip()
        if role == "assistant":
            text += "<|assistant|>\n" + content + eos + "\n"
        elif role in ("system", "user"):
            text += f"<|{role}|>\n" + content + "\n"
        else:
            raise DataError(f"invalid role {role!r}, not one of {ROLES}")
    return text


def render(messages: Sequence[dict], eos: str = EOS_TEXT) -> str:
    """The exact text open-instruct tokenizes (the tokenizer adds BOS in front of it); `eos` is
    the tokenizer's EOS text (`Tokenizer.eos_text`; Llama-2's "</s>" by default)."""
    return _concat_messages(messages, eos).strip()


def _special_re(tok: Tokenizer) -> re.Pattern:
    # Longest first, as the Hugging Face trie matches.
    names = sorted(tok.special_ids, key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(n) for n in names) + ")")


def _tokenize_hf(tok: Tokenizer, text: str) -> list[int]:
    """BOS (if the tokenizer has one) + Hugging Face tokenization: split at special strings,
    encode each piece."""
    ids = [] if tok.bos_id is None else [tok.bos_id]
    for part in _special_re(tok).split(text):
        if part in tok.special_ids:
            ids.append(tok.special_ids[part])
        elif part:
            ids.extend(tok.encode(part))
    return ids


def encode_conversation_ref(tok: Tokenizer, messages: Sequence[dict],
                            max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """open-instruct `encode_with_messages_format`, literally (O(turns^2) tokenization)."""
    if not messages:
        raise DataError("messages is empty")
    ids = _tokenize_hf(tok, render(messages, tok.eos_text))[:max_len]
    trained = np.ones(len(ids), dtype=bool)
    n = lambda text: min(len(_tokenize_hf(tok, text)), len(ids))  # noqa: E731
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            continue
        start = 0 if i == 0 else n(_concat_messages(messages[:i], tok.eos_text))
        so_far = _concat_messages(messages[: i + 1], tok.eos_text)
        if i + 1 < len(messages) and messages[i + 1]["role"] == "assistant":
            so_far += "<|assistant|>\n"  # the next turn's header is masked too
        end = n(so_far)
        trained[start:end] = False
        if end >= len(ids):
            break
    trained[:1] = False  # BOS (or the first token): open-instruct's labels[0] is never used after the shift
    return np.asarray(ids, dtype=np.int32), trained


def _pieces(messages: Sequence[dict]) -> list[tuple[str | None, bool]]:
    """(text, trained) pieces whose concatenation is `render(messages)`, each ending at "\\n" or
    before an EOS; text None is the EOS itself."""
    out: list[tuple[str | None, bool]] = []
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"].strip()
        if role == "assistant":
            after_prompt = i > 0 and messages[i - 1]["role"] != "assistant"
            out += [("<|assistant|>\n", not after_prompt), (content, True), (None, True),
                    ("\n", True)]
        elif role in ("system", "user"):
            out.append((f"<|{role}|>\n{content}\n", False))
        else:
            raise DataError(f"invalid role {role!r}, not one of {ROLES}")
    # The whole text is .strip()ped: drop trailing whitespace (never crosses an EOS).
    while out and out[-1][0] is not None:
        text, trained = out.pop()
        text = text.rstrip()
        if text:
            out.append((text, trained))
            break
    return out


def encode_conversation(tok: Tokenizer, messages: Sequence[dict],
                        max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize a conversation with the Tulu template.

    Returns ids (L,) int32 starting with BOS (when the tokenizer has one) and target_mask (L,)
    bool (see the module docstring for exactly what is True). `max_len` truncates both to at
    most max_len tokens.
    """
    if not messages:
        raise DataError("messages is empty")
    if not tok.newline_is_boundary:
        return encode_conversation_ref(tok, messages, max_len)
    special = _special_re(tok)
    texts: list[str] = []  # one batched sentencepiece call
    plan: list[tuple[int, bool, bool]] = []  # (index into texts or -special_id-1, trained, strip nl)
    chunk_start = True  # the next non-empty text starts a new sentencepiece chunk (dummy "▁")
    for text, trained in _pieces(messages):
        if text is None:
            plan.append((-tok.eos_id - 1, trained, False))
            chunk_start = True
            continue
        for part in special.split(text):
            if part in tok.special_ids:
                plan.append((-tok.special_ids[part] - 1, trained, False))
                chunk_start = True
            elif part:
                plan.append((len(texts), trained, not chunk_start))
                # Inside a chunk every piece follows a "\n": encode "\n" + piece, drop the "\n" ids.
                texts.append(part if chunk_start else "\n" + part)
                chunk_start = False
    encoded = tok.encode_batch(texts) if texts else []
    ids = [] if tok.bos_id is None else [tok.bos_id]
    trained_flags = [False] * len(ids)
    for ref, trained, strip_nl in plan:
        piece = [-ref - 1] if ref < 0 else encoded[ref][tok.newline_len if strip_nl else 0:]
        ids.extend(piece)
        trained_flags.extend([trained] * len(piece))
    trained_flags[0] = False  # nothing predicts position 0 (ids is never empty: a role header)
    if messages[-1]["role"] != "assistant":
        # open-instruct's last mask ends at the token count of the text WITH its final "\n" (only
        # the whole text is stripped); a byte-level BPE can merge that "\n" into the last token
        # ("|>\n" is one piece), which leaves the positions past that count trained, as there.
        end = len(_tokenize_hf(tok, _concat_messages(messages, tok.eos_text)))
        trained_flags[end:] = [True] * max(0, len(trained_flags) - end)
    return (np.asarray(ids[:max_len], dtype=np.int32),
            np.asarray(trained_flags[:max_len], dtype=bool))


def encode_pair(tok: Tokenizer, chosen: Sequence[dict], rejected: Sequence[dict],
                max_len: int | None = None
                ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((ids_c, mask_c), (ids_r, mask_r)): each conversation encoded on its own, as open-instruct's
    DPO does."""
    return encode_conversation(tok, chosen, max_len), encode_conversation(tok, rejected, max_len)
