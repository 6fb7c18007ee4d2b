"""data/formats.py: the SFT and DPO readers on files shaped like ADELIE's, and their errors."""
import json
from pathlib import Path

import pytest

from ie_engine.data.formats import DataError, read_dpo, read_sft

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "adelie_samples"


def raw_lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_read_sft_matches_raw_json():
    path = FIXTURES / "sft_sample.jsonl"
    got = list(read_sft(path))
    raw = raw_lines(path)
    assert len(got) == len(raw)
    for g, r in zip(got, raw):
        assert g["dataset"] == r.get("dataset", r.get("datasets"))  # plural key accepted
        assert g["id"] == str(r["id"]) and isinstance(g["id"], str)
        assert g["messages"] == [{"role": m["role"], "content": m["content"]}
                                 for m in r["messages"]]


def test_read_sft_json_array_and_defaults(tmp_path):
    raw = raw_lines(FIXTURES / "sft_sample.jsonl")
    for r in raw[:2]:
        r.pop("datasets"), r.pop("id")
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(raw, indent=2))
    got = list(read_sft(path))
    assert [g["messages"] for g in got] == [r["messages"] for r in raw]
    assert [g["dataset"] for g in got[:2]] == ["mix", "mix"] and got[1]["id"] == "1"


def test_json_array_streams_across_buffer_refills(tmp_path, monkeypatch):
    import ie_engine.data.formats as formats
    monkeypatch.setattr(formats, "_CHUNK", 7)  # every element spans many reads
    raw = [{"dataset": "d", "id": i, "messages": [{"role": "user", "content": "x" * i},
                                                  {"role": "assistant", "content": "y"}]}
           for i in range(23)]
    path = tmp_path / "a.json"
    path.write_text("\n [ " + " ,\n".join(json.dumps(r) for r in raw) + " ] \n")
    assert [g["messages"] for g in read_sft(path)] == [r["messages"] for r in raw]
    path.write_text("[]")
    assert list(read_sft(path)) == []


def test_read_sft_is_lazy(tmp_path):
    path = tmp_path / "big.jsonl"
    good = json.dumps({"dataset": "d", "id": 0, "messages": [{"role": "user", "content": "q"}]})
    path.write_text(good + "\n" + "{broken\n")
    it = read_sft(path)
    assert next(it)["dataset"] == "d"  # the first record comes before the bad line is parsed
    with pytest.raises(DataError, match=r"big.jsonl:2: invalid JSON"):
        next(it)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)  # callers that catch ValueError keep working


BAD_SFT = [
    ({"dataset": "d", "messages": [{"role": "bot", "content": "x"}]}, r"messages\[0\]\.role"),
    ({"dataset": "d", "messages": [{"role": "user", "content": 3}]}, r"messages\[0\]\.content"),
    ({"dataset": "d", "messages": []}, r"messages: expected a non-empty list"),
    ({"dataset": "d"}, r"messages: expected"),
    ({"datasets": 5, "messages": [{"role": "user", "content": "x"}]}, r"datasets: expected"),
    ({"dataset": "d", "id": [1], "messages": [{"role": "user", "content": "x"}]}, r"id: "),
    ([1, 2], r"expected a JSON object"),
]


@pytest.mark.parametrize("record,pattern", BAD_SFT)
def test_bad_sft_record_names_file_line_and_field(tmp_path, record, pattern):
    path = tmp_path / "bad.jsonl"
    ok = {"dataset": "d", "id": 1, "messages": [{"role": "user", "content": "x"}]}
    path.write_text(json.dumps(ok) + "\n\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=rf"bad\.jsonl:3: .*{pattern}"):
        list(read_sft(path))
    array = tmp_path / "bad.json"
    array.write_text(json.dumps([ok, record]))
    with pytest.raises(DataError, match=r"bad.json\[item 1\]"):
        list(read_sft(array))


def test_read_dpo_iefeedback_array():
    raw = json.loads((FIXTURES / "dpo_iefeedback.json").read_text())
    got = list(read_dpo(FIXTURES / "dpo_iefeedback.json"))
    assert [g["dataset"] for g in got] == [r["dataset"] for r in raw]
    # whole conversations are kept as they are
    assert got[0]["chosen"] == raw[0]["chosen"] and got[0]["rejected"] == raw[0]["rejected"]
    # response-only sides are appended to the prompt, minus its reference answer
    prompt = raw[1]["messages"][:-1]
    assert got[1]["chosen"] == prompt + raw[1]["chosen"]
    assert got[1]["rejected"] == prompt + raw[1]["rejected"]


def test_read_dpo_prompt_form():
    raw = raw_lines(FIXTURES / "dpo_prompt_form.jsonl")
    got = list(read_dpo(FIXTURES / "dpo_prompt_form.jsonl"))
    assert got[0]["chosen"] == [{"role": "user", "content": raw[0]["prompt"]},
                                {"role": "assistant", "content": raw[0]["chosen"]}]
    assert got[0]["rejected"][-1] == {"role": "assistant", "content": raw[0]["rejected"]}
    assert got[1]["chosen"] == raw[1]["prompt"] + raw[1]["chosen"]
    assert got[2]["chosen"] == raw[2]["chosen"] and got[2]["rejected"] == raw[2]["rejected"]
    assert [g["id"] for g in got] == ["0", "1", "2"]
    assert {g["dataset"] for g in got} == {"dpo_prompt_form"}
    for g in got:
        assert g["chosen"][:-1] == g["rejected"][:-1] and g["chosen"][-1]["role"] == "assistant"


U = {"role": "user", "content": "q"}
A = {"role": "assistant", "content": "a"}
BAD_DPO = [
    ({"prompt": "q", "chosen": "a"}, r": rejected: missing"),
    ({"chosen": [U, A], "rejected": [{"role": "user", "content": "other"}, A]},
     r": rejected\[0\]: chosen and rejected must share"),
    ({"chosen": [U, A], "rejected": [U, A, U, A]}, r": rejected\[.\]: chosen and rejected"),
    ({"chosen": [U, A, U], "rejected": [U, A, U]}, r": chosen: last turn is 'user'"),
    ({"chosen": [A], "rejected": [A]}, r": chosen: only assistant turns and no prompt"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, r": prompt\[0\]\.content"),
    ({"messages": [U], "chosen": [{"role": "tool", "content": "a"}], "rejected": "b"},
     r": chosen\[0\]\.role"),
]


@pytest.mark.parametrize("record,pattern", BAD_DPO)
def test_bad_dpo_record_names_file_line_and_field(tmp_path, record, pattern):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps(record) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:2" + pattern):
        list(read_dpo(path))


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="ADELIE sample files (../shared) not present")
def test_real_adelie_files():
    files = sorted((SAMPLES / "test_format").glob("**/*.jsonl"))
    assert files
    for f in files:
        raw = raw_lines(f)
        got = list(read_sft(f))
        assert len(got) == len(raw)
        assert all(g["dataset"] == r["datasets"] and g["id"] == str(r["id"])
                   and g["messages"] == r["messages"] for g, r in zip(got, raw))
