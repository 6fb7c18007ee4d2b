"""Read prediction files: JSONL, one test record per line plus the model's `output`.

A record is ADELIE's test record (`datasets` or `dataset`, `id`, `messages`) with a string
`output` added by generation; the gold answer is the content of the last message (the one the
model was not shown). Blank lines are skipped. Anything a scorer cannot read raises
ValueError("FILE:LINE: problem"), so a bad file is found before any scoring starts.

Scorers that find a record they cannot score (a MATRES gold outside the four labels, a SemEval
gold without a triple) raise RecordError with the record's index; `read_predictions` keeps each
record's line number so the caller can report that as FILE:LINE too (see `at_line`).
"""
from __future__ import annotations

import json
import os


class RecordError(ValueError):
    """A record a scorer cannot score; `index` is its position in the records list."""

    def __init__(self, index: int, message: str):
        super().__init__(f"record {index}: {message}")
        self.index = index
        self.problem = message


def _check(record, where: str) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "output" not in record:
        raise ValueError(f"{where}: no 'output' (the model's answer)")
    if not isinstance(record["output"], str):
        raise ValueError(f"{where}: 'output' must be a string, got {type(record['output']).__name__}")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: no 'messages' (a non-empty list; the last one holds the gold)")
    last = messages[-1]
    if not isinstance(last, dict) or not isinstance(last.get("content"), str):
        raise ValueError(f"{where}: the last message has no string 'content' (the gold answer)")


def read_predictions_with_lines(path: str | os.PathLike) -> tuple[list[dict], list[int]]:
    """(records, line number of each record), checking every record."""
    records, lines = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
            _check(record, where)
            records.append(record)
            lines.append(lineno)
    return records, lines


def read_predictions(path: str | os.PathLike) -> list[dict]:
    return read_predictions_with_lines(path)[0]


def at_line(path: str | os.PathLike, lines: list[int], err: RecordError) -> ValueError:
    """Turn a scorer's RecordError into the FILE:LINE form of every other bad-input error."""
    return ValueError(f"{path}:{lines[err.index]}: {err.problem}")


def gold_of(record: dict) -> str:
    return record["messages"][-1]["content"]


def dataset_of(record: dict) -> str | None:
    name = record.get("datasets", record.get("dataset"))
    return name if isinstance(name, str) else None
