"""Readers for SFT (IEInstruct / Tulu messages) and DPO (IEFeedback) files, lazily, record by record.

A file is JSONL (one object per line, blank lines skipped) or one JSON array (first non-blank
character "["), which is parsed element by element so a file of GBs never sits in memory.

`read_sft(path)` yields {"dataset": str, "id": str, "messages": [{"role", "content"}, ...]}.
  The source name is `dataset` or `datasets` (ADELIE's test files use the plural); a record
  without one gets the file's stem. `id` may be an int; a record without one gets its position.
`read_dpo(path)` yields {"dataset", "id", "chosen": messages, "rejected": messages}, both whole
  conversations that share every turn but the last, which is an assistant turn. Accepted forms:
  - IEFeedback: {"dataset", "id", "messages": prompt, "chosen": [msgs], "rejected": [msgs]};
  - {"prompt": str | msgs, "chosen": str | msgs, "rejected": str | msgs};
  - open-instruct: {"chosen": [msgs], "rejected": [msgs]} as whole conversations.
  A string prompt is one user turn, a string answer one assistant turn. A chosen/rejected list
  with a system or user turn is a whole conversation and is used as it is; one with only
  assistant turns is a response and is appended to the prompt (minus the prompt's last turn
  when that is an assistant turn: a prompt record that still holds its reference answer).
`count_records(path)` says how many records either yields (data/mixture.py draws from them).
Every record is checked; a bad one raises DataError("FILE:LINE: field: problem") (or
"FILE[item N]" inside a JSON array). DataError is the one exception the data layer raises for
bad input (records here, missing files and tokenizers in data/prepare.py); it is a ValueError.
`ROLES` is defined here once; the chat template (data/template.py) renders these roles.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

ROLES = ("system", "user", "assistant")
_CHUNK = 1 << 20


class DataError(ValueError):
    """Bad input to the data layer; the message names the file (and line and field when known)."""


def _array_items(f, name: str) -> Iterator[tuple[str, Any]]:
    """Yield (where, element) from a JSON array text stream without loading it whole."""
    dec = json.JSONDecoder()
    buf, pos, eof, index = "", 0, False, 0

    def more() -> bool:
        nonlocal buf, pos, eof
        chunk = f.read(_CHUNK)
        buf, pos, eof = buf[pos:] + chunk, 0, not chunk
        return bool(chunk)

    def skip_ws() -> str:  # next non-blank character, "" at end of file
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or not more():
                return buf[pos] if pos < len(buf) else ""

    skip_ws()
    pos += 1  # the "[" the caller saw
    while True:
        c = skip_ws()
        if c == "]":
            return
        if index > 0:
            if c != ",":
                raise DataError(f"{name}[item {index}]: expected ',' or ']' in JSON array")
            pos += 1
            skip_ws()
        while True:
            try:
                obj, end = dec.raw_decode(buf, pos)
                if end < len(buf) or eof:
                    break
            except json.JSONDecodeError as e:
                if eof:
                    raise DataError(f"{name}[item {index}]: invalid JSON: {e.msg}") from None
            more()  # the element may continue past the buffer
        yield f"{name}[item {index}]", obj
        pos, index = end, index + 1


def _records(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """(where, parsed JSON) for each record of a JSONL file or JSON array file."""
    name = str(path)
    with open(path, "rb") as f:
        is_array = f.read(4096).lstrip()[:1] == b"["
    if is_array:
        with open(path, encoding="utf-8") as f:
            try:
                yield from _array_items(f, name)
            except UnicodeDecodeError:
                raise DataError(f"{name}: not valid UTF-8") from None
        return
    with open(path, "rb") as f:  # bytes, so a bad line is named, not a decoder traceback
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{name}:{lineno}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                yield f"{name}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{name}:{lineno}: invalid JSON: {e.msg}") from None


def count_records(path: str | os.PathLike) -> int:
    """How many records read_sft / read_dpo yield from `path` (what data/mixture.py draws from):
    JSONL lines are counted by the reader's own blank-line rule, without parsing them."""
    with open(path, "rb") as f:
        if f.read(4096).lstrip()[:1] == b"[":
            return sum(1 for _ in _records(path))
        f.seek(0)
        return sum(1 for raw in f if raw.decode("utf-8", "replace").strip())


def _messages(value: Any, where: str, field: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: {field}: expected a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(f"{where}: {field}[{i}]: expected an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: {field}[{i}].role: {role!r} is not one of {ROLES}")
        if not isinstance(content, str):
            raise DataError(f"{where}: {field}[{i}].content: expected a string, got "
                             f"{type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def _meta(rec: Any, where: str, default_dataset: str, position: int) -> tuple[str, str]:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    key = "dataset" if "dataset" in rec else "datasets"
    dataset = rec.get(key, default_dataset)
    if not isinstance(dataset, str):
        raise DataError(f"{where}: {key}: expected a string, got {type(dataset).__name__}")
    rid = rec.get("id", position)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise DataError(f"{where}: id: expected a string or integer, got {type(rid).__name__}")
    return dataset, str(rid)


def read_sft(path: str | os.PathLike, *, training: bool = False) -> Iterator[dict]:
    """Yield {"dataset", "id", "messages"} records of an SFT file (see module docstring).
    training: a record must have an assistant turn (what SFT trains on); prompt files for
    generation need none."""
    stem = Path(path).stem
    for position, (where, rec) in enumerate(_records(path)):
        dataset, rid = _meta(rec, where, stem, position)
        messages = _messages(rec.get("messages"), where, "messages")
        if training and not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: no assistant turn (nothing to train on)")
        yield {"dataset": dataset, "id": rid, "messages": messages}


def _side(value: Any, where: str, field: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return _messages(value, where, field)


def _whole(prompt: list[dict] | None, side: list[dict], where: str, field: str) -> list[dict]:
    if any(m["role"] != "assistant" for m in side):
        return side  # already a whole conversation
    if prompt is None:
        raise DataError(f"{where}: {field}: only assistant turns and no prompt/messages field")
    if prompt[-1]["role"] == "assistant":
        prompt = prompt[:-1]  # the prompt record still holds its reference answer
    return prompt + side


def read_dpo(path: str | os.PathLike) -> Iterator[dict]:
    """Yield {"dataset", "id", "chosen", "rejected"} preference pairs (see module docstring)."""
    stem = Path(path).stem
    for position, (where, rec) in enumerate(_records(path)):
        dataset, rid = _meta(rec, where, stem, position)
        for field in ("chosen", "rejected"):
            if field not in rec:
                raise DataError(f"{where}: {field}: missing")
        prompt = None
        for key in ("messages", "prompt"):
            if rec.get(key) is not None:
                value = rec[key]
                prompt = ([{"role": "user", "content": value}] if isinstance(value, str)
                          else _messages(value, where, key))
                break
        chosen = _whole(prompt, _side(rec["chosen"], where, "chosen"), where, "chosen")
        rejected = _whole(prompt, _side(rec["rejected"], where, "rejected"), where, "rejected")
        for field, conv in (("chosen", chosen), ("rejected", rejected)):
            if conv[-1]["role"] != "assistant":
                raise DataError(f"{where}: {field}: last turn is {conv[-1]['role']!r}, "
                                 "not an assistant answer")
        if len(chosen) != len(rejected) or chosen[:-1] != rejected[:-1]:
            turn = next((i for i, (c, r) in enumerate(zip(chosen[:-1], rejected[:-1])) if c != r),
                        min(len(chosen), len(rejected)) - 1)
            raise DataError(f"{where}: rejected[{turn}]: chosen and rejected must share every "
                             f"turn but the last ({len(chosen)} vs {len(rejected)} turns)")
        yield {"dataset": dataset, "id": rid, "chosen": chosen, "rejected": rejected}
