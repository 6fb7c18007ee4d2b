"""bench.real_model split: ADELIE's zero-shot files into train / held-out parts, disjoint by id,
the same for the same seed, different for another; held-out records unchanged, training
records with ADELIE's "[Answer]: " in front of the gold. Reads ../shared's
ADELIE sample files; skips without them."""
import json

import pytest

from ie_engine.bench import real_model

pytestmark = pytest.mark.skipif(not real_model.ADELIE_SAMPLES.is_dir(),
                                reason=f"ADELIE sample files not at {real_model.ADELIE_SAMPLES}")


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_split_is_disjoint_seeded_and_keeps_records(tmp_path):
    info = real_model.split(tmp_path / "a", n_train=7, n_heldout=5, seed=3)
    real_model.split(tmp_path / "b", n_train=7, n_heldout=5, seed=3)
    real_model.split(tmp_path / "c", n_train=7, n_heldout=5, seed=4)
    for name in real_model.ZERO_SHOT:
        source = {r["id"]: r for r in real_model.read_zero_shot(name)}
        train, held = read(tmp_path / "a" / f"{name}-train.jsonl"), read(tmp_path / "a" / f"{name}-heldout.jsonl")
        ids_t, ids_h = {r["id"] for r in train}, {r["id"] for r in held}
        assert len(ids_t) == 7 and len(ids_h) == 5 and not ids_t & ids_h
        assert all(r == source[r["id"]] for r in held)  # held-out: unchanged
        for r in train:  # train: ADELIE's "[Answer]: " in front of the gold, nothing else changed
            want = source[r["id"]]
            assert r["messages"][:-1] == want["messages"][:-1] and r["datasets"] == want["datasets"]
            assert r["messages"][-1]["content"] == real_model.ANSWER_MARK + want["messages"][-1]["content"]
        assert sorted(ids_h) == info["files"][name]["heldout_ids"]
        assert (tmp_path / "b" / f"{name}-heldout.jsonl").read_text() == (tmp_path / "a" / f"{name}-heldout.jsonl").read_text()
        assert {r["id"] for r in read(tmp_path / "c" / f"{name}-heldout.jsonl")} != ids_h


def test_split_refuses_more_ids_than_the_file_has(tmp_path):
    with pytest.raises(ValueError, match="ids, asked for"):
        real_model.split(tmp_path, n_train=900, n_heldout=200)
