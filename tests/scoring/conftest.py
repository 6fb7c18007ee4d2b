"""Shared helpers for the scorer tests: building prediction records and finding ADELIE's
sample files (../shared/data/adelie_samples beside the repository; tests skip without them)."""
import json
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "adelie_samples" / "test_format"


def make_record(gold: str, output: str, dataset: str = "semeval", user: str = "Text: ...") -> dict:
    return {"datasets": dataset, "id": 0, "output": output,
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": gold}]}


@pytest.fixture
def record():
    return make_record


@pytest.fixture
def sample():
    """sample("zeroshot/semeval.jsonl") -> list of records without outputs (skips if absent)."""
    def load(name: str) -> list[dict]:
        path = SAMPLES / name
        if not path.is_file():
            pytest.skip(f"ADELIE sample file {path} not present")
        return [json.loads(line) for line in path.open(encoding="utf-8")]
    return load


def with_outputs(records: list[dict], outputs) -> list[dict]:
    return [{**r, "output": o} for r, o in zip(records, outputs)]


@pytest.fixture
def outputs():
    return with_outputs
