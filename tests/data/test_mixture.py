"""Dataset mixing (data/mixture.py): the entry syntax and its errors, the seeded draw, and a mixed
token cache checked against a reference: the cache of a file that holds exactly the drawn
records, in file order. A changed mix changes the fingerprint and never reuses a cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ie_engine.bench.bench_prepare import TextSource, synthetic_sft, write_jsonl
from ie_engine.data.cache import TokenCache
from ie_engine.data.formats import DataError, count_records, read_sft
from ie_engine.data.mixture import Source, draw, parse_source
from ie_engine.data.prepare import fingerprint, prepare
from ie_engine.data.tokenizer import train_tokenizer
from ie_engine.engine.config import ConfigError, parse_config
from ie_engine.engine.run_config import RunConfig

SEQ = 256


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    src = TextSource(seed=11, n_types=5000, n_sentences=1000)
    recs = list(synthetic_sft(70, seed=4, scale=0.05, src=src))
    for r in recs[:30]:
        r["dataset"] = "ie"
    for r in recs[30:]:
        r["dataset"] = "tulu"
    tok = train_tokenizer([m["content"] for r in recs for m in r["messages"]], 600, d / "tok.model")
    return {"dir": d, "tok": tok, "ie": write_jsonl(recs[:30], d / "ie.jsonl"),
            "tulu": write_jsonl(recs[30:], d / "tulu.jsonl")}


@pytest.mark.parametrize("entry, source", [
    ("a.jsonl", Source("a.jsonl")),
    ("a.jsonl:100000", Source("a.jsonl", cap=100000)),
    ("a.jsonl:1", Source("a.jsonl", cap=1)),
    ("a.jsonl:0.3", Source("a.jsonl", share=0.3)),
    ("a.jsonl:.5", Source("a.jsonl", share=0.5)),
    ("a.jsonl:1.0", Source("a.jsonl", share=1.0)),
    ("a.jsonl:5e-1", Source("a.jsonl", share=0.5)),
    ("runs:v2/a.jsonl", Source("runs:v2/a.jsonl")),           # ':' inside a path: no number after it
    ("odd:7.jsonl", Source("odd:7.jsonl")),
    ("dir/odd:7:1.0", Source("dir/odd:7", share=1.0)),        # a name ending in ':<digits>' + an explicit take
])
def test_entries_parse(entry, source):
    assert parse_source(entry) == source


@pytest.mark.parametrize("entry, why", [
    ("a.jsonl:1.5", r"share must lie in \(0, 1\]"),
    ("a.jsonl:1e5", r"share must lie in \(0, 1\]"),
    ("a.jsonl:0.0", r"share must lie in \(0, 1\]"),
    ("a.jsonl:-0.3", r"share must lie in \(0, 1\]"),
    ("a.jsonl:-5", r"cap is a number of records >= 1, got -5"),
    ("a.jsonl:0", r"cap is a number of records >= 1, got 0"),
    ("a.jsonl:", r"ends in ':' with nothing after it"),
    (":0.3", r"no file before the ':'"),
])
def test_bad_takes_say_why(entry, why):
    with pytest.raises(ValueError, match=why):
        parse_source(entry)


@pytest.mark.parametrize("second, match", [
    ("{tulu}:2.0", r"data\.train_files\[1\]: .*share must lie in \(0, 1\], got 2\.0"),
    ("{tulu}:-3", r"data\.train_files\[1\]: .*cap is a number of records >= 1, got -3"),
    ("{tulu}:", r"data\.train_files\[1\]: .*nothing after it"),
    ("{dir}/missing.jsonl:100", r"data\.train_files\[1\]: .*missing\.jsonl does not exist$"),
    ("{tulu}:abc", r"data\.train_files\[1\]: .*tulu\.jsonl:abc does not exist \(a cap or share goes after"),
])
def test_bad_entries_are_config_errors_naming_the_key(files, second, match):
    entry = second.format(tulu=files["tulu"], dir=files["dir"])
    with pytest.raises(ConfigError, match=match):
        parse_config(RunConfig, [f'data.train_files=["{files["ie"]}","{entry}"]'])  # quoted: YAML reads `x:` as a mapping


def test_good_mix_parses_and_eval_files_are_checked_the_same_way(files):
    cfg = parse_config(RunConfig, [f"data.train_files=[{files['ie']},{files['tulu']}:20,{files['tulu']}:0.5]"])
    assert cfg.data.train_files[1].endswith("tulu.jsonl:20")
    with pytest.raises(ConfigError, match=r"data\.eval_files\[0\]: .*share"):
        parse_config(RunConfig, [f"data.eval_files=[{files['ie']}:3.0]"])
    parse_config(RunConfig, ["data.eval_files=[bundled]"])  # the bundled held-out set is no file


def test_count_records_is_what_the_reader_yields(files, tmp_path):
    assert count_records(files["tulu"]) == sum(1 for _ in read_sft(files["tulu"])) == 40
    padded = tmp_path / "blank.jsonl"
    lines = Path(files["ie"]).read_text().splitlines()
    padded.write_text("\n".join(lines[:3]) + "\n\n  \n" + "\n".join(lines[3:6]))  # blank lines, no final newline
    array = tmp_path / "array.json"
    array.write_text(json.dumps([json.loads(l) for l in lines[:4]]))
    for path in (padded, array):
        assert count_records(path) == sum(1 for _ in read_sft(path)), path


def test_the_draw_is_seeded_deterministic_and_in_file_order():
    cap, share = Source("x", cap=30), Source("x", share=0.25)
    a = draw(cap, 1000, seed=0, index=1)
    assert len(a) == 30 and (np.diff(a) > 0).all() and a.max() < 1000
    np.testing.assert_array_equal(a, draw(cap, 1000, seed=0, index=1))   # the same seed: the same records
    assert not np.array_equal(a, draw(cap, 1000, seed=1, index=1))       # another seed: others
    assert not np.array_equal(a, draw(cap, 1000, seed=0, index=2))       # a second listing: an independent draw
    assert len(draw(share, 1000, seed=0, index=0)) == 250
    assert len(draw(Source("x", share=0.3), 5, seed=0, index=0)) == 2    # 1.5 rounds to 2
    np.testing.assert_array_equal(draw(Source("x", cap=50), 20, 0, 0), np.arange(20))  # a cap above the size: all
    assert draw(Source("x"), 20, 0, 0) is None


def test_a_mixed_cache_equals_the_cache_of_the_drawn_records(files, tmp_path):
    seed = 3
    out = prepare("sft", [files["ie"], f"{files['tulu']}:15"], files["tok"], SEQ, tmp_path / "mix",
                  workers=1, seed=seed, progress=False)
    # the reference: the drawn records written out in file order, packed with the same seed
    picked = draw(Source(files["tulu"], cap=15), 40, seed, index=1)
    lines = Path(files["tulu"]).read_text().splitlines()
    ref_file = tmp_path / "drawn.jsonl"
    ref_file.write_text("".join(lines[i] + "\n" for i in picked))
    ref = prepare("sft", [files["ie"], ref_file], files["tok"], SEQ, tmp_path / "ref", workers=1, seed=seed,
                  progress=False)
    for name in ("tokens.bin", "targets.bin"):
        assert (Path(out) / name).read_bytes() == (Path(ref) / name).read_bytes(), name
    stats, ref_stats = TokenCache(out).stats(), TokenCache(ref).stats()
    assert stats["per_dataset"] == ref_stats["per_dataset"]
    ie, tulu = stats["per_input"]
    assert (ie["take"], ie["file_records"], ie["records"]) == ("all", 30, 30)
    assert (tulu["take"], tulu["file_records"], tulu["records"]) == ("15", 40, 15)
    assert tulu == {**ref_stats["per_input"][1], "path": tulu["path"], "take": "15", "file_records": 40}
    for key in ("records", "tokens", "target_tokens"):
        assert ie[key] + tulu[key] == stats[key], key


def test_a_changed_mix_changes_the_fingerprint_and_rebuilds(files, tmp_path, capfd):
    def fp(*inputs, seed=0):
        return fingerprint("sft", list(inputs), files["tok"], SEQ, "truncate", seed)

    ie, tulu = files["ie"], files["tulu"]
    prints = [fp(ie, tulu), fp(ie, f"{tulu}:20"), fp(ie, f"{tulu}:21"), fp(ie, f"{tulu}:0.5"),
              fp(ie, f"{tulu}:20", seed=1), fp(f"{ie}:0.5", tulu)]
    assert len({json.dumps(p, sort_keys=True) for p in prints}) == len(prints)
    assert fp(ie, f"{tulu}:20") == fp(ie, f"{tulu}:20")

    out = tmp_path / "c"
    prepare("sft", [ie, f"{tulu}:20"], files["tok"], SEQ, out, workers=1, progress=False)
    capfd.readouterr()
    prepare("sft", [ie, f"{tulu}:20"], files["tok"], SEQ, out, workers=1, progress=False)
    assert "reusing cache" in capfd.readouterr().err
    prepare("sft", [ie, f"{tulu}:10"], files["tok"], SEQ, out, workers=1, progress=False)
    assert "reusing" not in capfd.readouterr().err
    assert TokenCache(out).stats()["per_input"][1]["records"] == 10


def test_prepare_refuses_a_bad_take(files, tmp_path):
    with pytest.raises(DataError, match=r"share must lie in"):
        prepare("sft", [f"{files['tulu']}:1.5"], files["tok"], SEQ, tmp_path / "c", workers=1, progress=False)
