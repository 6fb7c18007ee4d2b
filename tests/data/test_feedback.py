"""data/char_bleu.py against NLTK; data/feedback.py's IEFeedback pairs against ADELIE's rules."""
import json
import math
import random
import statistics

import pytest

import ie_engine.data.char_bleu as char_bleu_mod
from ie_engine.data.char_bleu import answer_text, char_bleu, char_bleu_many, score_sample, score_samples
from ie_engine.data.feedback import build_pairs, write_feedback
from ie_engine.data.formats import read_dpo

bleu_score = pytest.importorskip("nltk.translate.bleu_score")
M = "[Answer]: "


def nltk_char_bleu(gold, pred):
    """ADELIE's call (compute_metric_4OpenInstruct.py), the reference."""
    return bleu_score.sentence_bleu([list(gold)], list(pred),
                                    smoothing_function=bleu_score.SmoothingFunction().method3)


# ------------------------------------------------------------------ char BLEU vs NLTK

WORDS = ["Ada Lovelace", "Paris", "founded by", "located in", "person", "NA", "Whole", "1998",
         "北京", "Zürich", "émigré", "🙂", "a\tb", "x\ny"]
ALPHABETS = ["ab", "ab ;()", "abcdefghijklmnopqrstuvwxyz ", "NA ", "中文字符测试 ",
             "éèêë\u0301 🙂\n"]


def ie_text(rng, n_items):
    return "; ".join("(%s; %s; %s)" % tuple(rng.choice(WORDS) for _ in range(3))
                     for _ in range(n_items))


def mutate(text, rng):
    chars = list(text)
    for _ in range(rng.randint(0, 6)):
        op = rng.random()
        if op < 0.4 and chars:
            chars[rng.randrange(len(chars))] = rng.choice("abc ;()NA中")
        elif op < 0.7 and chars:
            del chars[rng.randrange(len(chars))]
        else:
            chars.insert(rng.randint(0, len(chars)), rng.choice("xyz ;"))
    out = "".join(chars)
    return out[:rng.randint(0, len(out))] if rng.random() < 0.15 else out


def bleu_cases(n=1500, seed=0):
    rng = random.Random(seed)
    cases = [("NA", "NA"), ("NA", "N"), ("N", "NA"), ("NA", "AN"), ("NA", ""), ("", "NA"),
             ("", ""), ("a", "a"), ("a", "b"), ("ab", "ab"), ("abc", "abc"), ("abc", "abd"),
             ("abcd", "abcd"), ("aaaa", "aa"), ("aa", "aaaa"), ("abab", "baba"), (" ", " "),
             ("NA", "NA NA"), ("xyz", "abc"), ("(a; b; c)", "(a; b; c)"), ("x" * 50, "y" * 50)]
    while len(cases) < n:
        kind = rng.random()
        if kind < 0.35:  # IE-like answers and sampled variants of them
            gold = ie_text(rng, rng.randint(0, 6))
            pred = mutate(gold, rng) if rng.random() < 0.8 else ie_text(rng, rng.randint(0, 6))
        elif kind < 0.7:  # random strings over small alphabets: many repeated n-grams
            alpha = rng.choice(ALPHABETS)
            gold = "".join(rng.choice(alpha) for _ in range(rng.randint(0, 40)))
            pred = mutate(gold, rng) if rng.random() < 0.5 else "".join(
                rng.choice(alpha) for _ in range(rng.randint(0, 40)))
        elif kind < 0.85:  # short answers, 0-3 characters
            alpha = rng.choice(ALPHABETS)
            gold = "".join(rng.choice(alpha) for _ in range(rng.randint(0, 3)))
            pred = "".join(rng.choice(alpha) for _ in range(rng.randint(0, 3)))
        else:  # identical or disjoint
            gold = "".join(rng.choice("abcdef ") for _ in range(rng.randint(1, 30)))
            disjoint = gold.translate(str.maketrans("abcdef ", "ghijkl_"))
            pred = gold if rng.random() < 0.5 else disjoint
        cases.append((gold, pred))
    return cases


def test_char_bleu_equals_nltk_on_varied_pairs():
    cases = bleu_cases()
    expected = [nltk_char_bleu(g, p) for g, p in cases]
    one = [char_bleu(g, p) for g, p in cases]
    many = char_bleu_many([g for g, _ in cases], [p for _, p in cases])
    for (g, p), e, a, b in zip(cases, expected, one, many):
        assert abs(a - e) <= 1e-12 and abs(b - e) <= 1e-12, (g, p, e, a, b)
    # the same float operations as NLTK, so in practice bit for bit
    assert sum(a == e for a, e in zip(one, expected)) == len(cases)
    assert sum(b == e for b, e in zip(many, expected)) == len(cases)
    assert {e for e in expected} >= {0, 1.0}  # no match and exact match both exercised
    assert any(0 < e < 1 for e in expected)


def test_short_answers_have_nltk_values():
    # a 2-character exact match has no 3- or 4-gram: method3 gives 1/2 and 1/4 for them
    assert char_bleu("NA", "NA") == nltk_char_bleu("NA", "NA") == pytest.approx(2 ** -0.75)
    assert char_bleu("abc", "abc") == pytest.approx(2 ** -0.25)
    assert char_bleu("abcd", "abcd") == 1.0
    assert char_bleu("NA", "") == 0.0 == char_bleu("", "") == char_bleu("ab", "cd")


def test_char_bleu_many_chunks_and_large_alphabets(monkeypatch):
    rng = random.Random(3)
    # many distinct code points: the packed keys no longer fit, chunks are halved
    golds = ["".join(chr(rng.randrange(0x4E00, 0x4E00 + 60000)) for _ in range(200))
             for _ in range(40)]
    preds = [mutate(g, rng) for g in golds]
    # one pair alone has 35,000 distinct characters (> 2**15): scored by char_bleu
    golds.append("".join(chr(0x10000 + i) for i in range(20000)))
    preds.append("".join(chr(0x10000 + 15000 + i) for i in range(20000)))
    got = char_bleu_many(golds, preds)
    assert got == [char_bleu(g, p) for g, p in zip(golds, preds)]
    assert got[:5] == [nltk_char_bleu(g, p) for g, p in zip(golds[:5], preds[:5])]
    cases = bleu_cases(200, seed=5)
    golds, preds = [g for g, _ in cases], [p for _, p in cases]
    whole = char_bleu_many(golds, preds)
    monkeypatch.setattr(char_bleu_mod, "_CHUNK_CHARS", 64)  # many chunks of a few pairs
    assert char_bleu_many(golds, preds) == whole
    assert char_bleu_many([], []) == []
    assert char_bleu_many(["a\ud800b"], ["a\ud800b"]) == [char_bleu("a\ud800b", "a\ud800b")]
    with pytest.raises(ValueError, match="2 golds but 1 preds"):
        char_bleu_many(["a", "b"], ["a"])


def test_answer_text_and_scores_follow_adelies_split():
    rng = random.Random(7)
    pieces = ["[Answer]: ", "[Answer]:", "Because x. ", "NA", "(a; b; c)", "\n", " "]
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 5)))
        parts = text.split(M)
        assert answer_text(text) == (parts[1] if len(parts) > 1 else None), text
    assert answer_text("[Answer]: ") == ""
    assert answer_text("explain [Answer]: (a; b) [Answer]: (c)") == "(a; b) "
    gold = "Reasoning. [Answer]: (Ada; born in; Paris)"
    preds = ["[Answer]: (Ada; born in; Paris)", "No marker here", "[Answer]:(x)", "[Answer]: ",
             "thinking [Answer]: (Ada; born in; Lima)[Answer]: junk"]
    expected = [nltk_char_bleu(answer_text(gold), answer_text(p)) if answer_text(p) is not None
                else -1 for p in preds]
    assert [score_sample(gold, p) for p in preds] == expected
    assert score_samples([gold] * len(preds), preds) == expected
    assert expected[0] == 1.0 and expected[1] == expected[2] == -1
    with pytest.raises(ValueError, match="has no"):
        score_sample("no marker", "[Answer]: x")


# ------------------------------------------------------------------ pair building

def record(i, gold="[Answer]: (a; b; c)", dataset="ds", key="dataset"):
    return {key: dataset, "id": i,
            "messages": [{"role": "system", "content": "Be precise."},
                         {"role": "user", "content": f"Extract from text {i}."},
                         {"role": "assistant", "content": gold}]}


def item(i, scores, samples=None, **kw):
    samples = samples or [f"p{i} s{j} [Answer]: {j}" for j in range(len(scores))]
    return {"record": record(i, **kw), "samples": samples, "scores": scores}


def answers(pair):
    return pair["chosen"][-1]["content"], pair["rejected"][-1]["content"]


def test_model_pair_takes_first_best_and_first_worst():
    pairs, stats = build_pairs([item(0, [0.5, 0.9, 0.9, 0.25, 0.25])], limit=10, gold_rate=0.0)
    assert [answers(p) for p in pairs] == [("p0 s1 [Answer]: 1", "p0 s3 [Answer]: 3")]
    p = pairs[0]
    assert p["dataset"] == "ds" and p["id"] == 0 and p["messages"] == record(0)["messages"]
    assert p["chosen"][:-1] == p["rejected"][:-1] == record(0)["messages"][:-1]
    assert p["chosen"][-1]["role"] == p["rejected"][-1]["role"] == "assistant"
    assert stats["model_pairs"] == 1 and stats["mean_delta"] == pytest.approx(0.65)


def test_minus_one_is_rejected_but_never_chosen():
    pairs, stats = build_pairs([item(0, [-1, -1, 0.25, 0.0]), item(1, [-1, -1])], limit=10,
                               gold_rate=0.0)
    assert [answers(p) for p in pairs] == [("p0 s2 [Answer]: 2", "p0 s0 [Answer]: 0")]
    assert stats["model_skipped"]["all_invalid"] == 1
    # an all -1 prompt is left to the gold draw, where its first sample is rejected
    pairs, stats = build_pairs([item(1, [-1, -1])], limit=10, gold_rate=1.0)
    assert [answers(p) for p in pairs] == [("[Answer]: (a; b; c)", "p1 s0 [Answer]: 0")]
    assert stats["gold_pairs"] == 1 and stats["mean_delta"] == 2.0


def test_delta_must_be_strictly_greater_than_min_delta():
    items = [item(0, [0.75, 0.5]), item(1, [0.875, 0.5])]  # deltas 0.25 and 0.375, exact
    pairs, stats = build_pairs(items, limit=10, gold_rate=0.0, min_delta=0.25)
    assert [p["id"] for p in pairs] == [1] and stats["model_skipped"]["delta_small"] == 1
    pairs, _ = build_pairs(items, limit=10, gold_rate=0.0, min_delta=0.2499)
    assert [p["id"] for p in pairs] == [0, 1]
    # gold side: 1 - 0.875 = 0.125 <= 0.125 is dropped, and the draw is not replaced
    pairs, stats = build_pairs([item(0, [0.875, 0.875]), item(1, [0.75, 0.75])], limit=2,
                               gold_rate=1.0, min_delta=0.125)
    assert [p["id"] for p in pairs] == [1]
    assert stats["gold_drawn"] == 2 and stats["gold_skipped"]["delta_small"] == 1


def test_model_limit_is_limit_minus_int_gold_share():
    items = [item(i, [1.0, 0.0]) for i in range(8)]
    pairs, stats = build_pairs(items, limit=10, gold_rate=0.75, seed=1)  # int(7.5) = 7 gold
    assert stats["model_limit"] == 3 and stats["gold_target"] == 7
    assert [p["id"] for p in pairs[:3]] == [0, 1, 2] and stats["model_pairs"] == 3
    assert stats["model_skipped"]["over_limit"] == 5 and stats["leftover_prompts"] == 5
    # fewer leftovers than the gold target: all are drawn (ADELIE's random.sample would raise)
    assert stats["gold_drawn"] == 5 and [p["id"] for p in pairs[3:]] == [3, 4, 5, 6, 7]
    assert all(answers(p)[0] == "[Answer]: (a; b; c)" for p in pairs[3:])


def test_gold_draw_is_seeded_and_in_prompt_order():
    items = [item(i, [0.5, 0.5, 0.25]) if i % 3 else item(i, [0.5, 0.5]) for i in range(60)]
    runs = {seed: build_pairs(items, limit=40, gold_rate=0.5, seed=seed) for seed in (0, 0, 1, 2)}
    ids = {seed: [p["id"] for p in pairs if answers(p)[0] == "[Answer]: (a; b; c)"]
           for seed, (pairs, _) in runs.items()}
    pairs, stats = build_pairs(items, limit=40, gold_rate=0.5, seed=0)
    assert pairs == runs[0][0] and stats == runs[0][1]  # reproducible
    assert ids[0] != ids[1] and ids[1] != ids[2]  # the seed changes the draw
    model_ids = [p["id"] for p in pairs[:stats["model_pairs"]]]
    leftover = [i for i in range(60) if i not in model_ids]
    assert model_ids == [i for i in range(60) if i % 3][:20]  # limit 40 - 20 gold
    assert ids[0] == sorted(random.Random(0).sample(leftover, 20))  # what ADELIE would draw
    assert stats["gold_pairs"] == 20 and stats["gold_fraction"] == 0.5


def test_identical_texts_dropped_unless_keep_identical():
    na = "[Answer]: NA"
    items = [{"record": record(0, gold=na), "samples": [na, na, na]},  # scored here: 2**-0.75
             item(1, [0.9, 0.1], samples=["same", "same"])]  # given scores, equal texts
    pairs, stats = build_pairs(items, limit=10, gold_rate=0.5)
    assert stats["model_skipped"]["identical"] == 1 and stats["gold_drawn"] == 2
    assert stats["gold_skipped"]["identical"] == 1  # the NA copy; prompt 1's gold differs
    assert [(p["id"], answers(p)) for p in pairs] == [(1, ("[Answer]: (a; b; c)", "same"))]
    assert stats["score_mean"] == pytest.approx((3 * 2 ** -0.75 + 1.0) / 5)
    kept, stats = build_pairs(items, limit=10, gold_rate=0.5, keep_identical=True)
    assert [(p["id"], answers(p)) for p in kept] == [(1, ("same", "same")), (0, (na, na))]
    assert stats["model_pairs"] == stats["gold_pairs"] == 1


def test_prompts_without_samples_are_skipped():
    items = [{"record": record(0), "samples": []}, item(1, [1.0, 0.0]),
             {"record": record(2), "samples": [], "scores": []}]
    pairs, stats = build_pairs(items, limit=10, gold_rate=0.9)
    assert [p["id"] for p in pairs] == [1]
    assert stats["model_skipped"]["no_samples"] == 2 and stats["leftover_prompts"] == 0
    assert stats["prompts"] == 3 and stats["samples"] == 2 and stats["prompts_without_pair"] == 2


def test_scores_computed_when_absent_match_given_scores():
    rng = random.Random(11)
    items = []
    for i in range(30):
        gold = "Because. [Answer]: " + ie_text(rng, rng.randint(1, 3))
        samples = [mutate(gold, rng) if rng.random() < 0.8 else "no answer" for _ in range(5)]
        items.append({"record": record(i, gold=gold, key="datasets"), "samples": samples})
    scored = [{**it, "scores": [score_sample(it["record"]["messages"][-1]["content"], s)
                                for s in it["samples"]]} for it in items]
    assert build_pairs(items, limit=20) == build_pairs(scored, limit=20)
    pairs, stats = build_pairs(items, limit=20)
    flat = [s for it in scored for s in it["scores"] if s != -1]
    assert stats["score_mean"] == pytest.approx(statistics.fmean(flat))
    assert stats["score_std"] == pytest.approx(statistics.pstdev(flat))
    assert stats["samples_without_answer"] == sum(s == -1 for it in scored for s in it["scores"])
    assert all(p["dataset"] == "ds" for p in pairs)  # the plural key is read
    assert stats["model_pairs"] + sum(stats["model_skipped"].values()) == stats["prompts"]
    assert stats["gold_drawn"] == stats["gold_pairs"] + sum(stats["gold_skipped"].values())


def adelie_merge_ref(items, limit, gold_rate, min_delta, seed):
    """scripts/utils/DPO/merge.py's two loops over in-memory items, as it runs with
    random.seed(seed): the reference for build_pairs(keep_identical=True)."""
    gold_num = int(limit * gold_rate)
    out, not_in, cnt = [], [], -1
    for i, it in enumerate(items):
        c_num, r_num = -1.0, 2.0
        for text, score in zip(it["samples"], it["scores"]):
            if score > c_num:
                chosen, c_num = text, score
            if score < r_num:
                rejected, r_num = text, score
        if abs(c_num - r_num) <= min_delta:
            not_in.append(i)
            continue
        cnt += 1
        if cnt >= limit - gold_num:
            not_in.append(i)
            continue
        out.append((it["record"]["id"], chosen, rejected))
    gold_idx = random.Random(seed).sample(not_in, gold_num)
    for i, it in enumerate(items):
        if i not in gold_idx:
            continue
        r_num = 2.0
        for text, score in zip(it["samples"], it["scores"]):
            if score < r_num:
                rejected, r_num = text, score
        if abs(1.0 - r_num) <= min_delta:
            continue
        out.append((it["record"]["id"], it["record"]["messages"][-1]["content"], rejected))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_build_pairs_matches_adelies_merge_loops(seed):
    rng = random.Random(100 + seed)
    levels = [-1, 0.0, 0.05, 0.1, 0.15, 0.3, 0.6, 0.95, 1.0]  # ties and near-threshold deltas
    items = [item(i, [rng.choice(levels) for _ in range(5)]) for i in range(400)]
    for limit, gold_rate in ((100, 0.7), (200, 0.3), (50, 0.0)):
        pairs, stats = build_pairs(items, limit=limit, gold_rate=gold_rate, seed=seed,
                                   keep_identical=True)
        expected = adelie_merge_ref(items, limit, gold_rate, 0.1, seed)
        assert [(p["id"], *answers(p)) for p in pairs] == expected
        assert stats["pairs"] == len(expected) <= limit


def test_bad_items_name_the_item_and_field():
    with pytest.raises(ValueError, match=r"item 0 \(ds/0\): scores: expected 2"):
        build_pairs([item(0, [0.5], samples=["a", "b"])])
    with pytest.raises(ValueError, match=r"item 0 .*scores\[1\]: 1.5"):
        build_pairs([item(0, [0.5, 1.5])])
    bad = record(3)
    bad["messages"] = bad["messages"][:-1]
    with pytest.raises(ValueError, match=r"item 1 \(ds/3\): record.messages\[-1\].role"):
        build_pairs([item(0, [0.5]), {"record": bad, "samples": ["x"]}])
    with pytest.raises(ValueError, match=r"item 0 \(ds/0\): record.messages\[-1\].content"):
        build_pairs([{"record": record(0, gold="no marker"), "samples": ["[Answer]: x"]}])
    with pytest.raises(ValueError, match="gold_rate"):
        build_pairs([], gold_rate=1.5)


def test_written_file_reads_back_as_dpo_pairs(tmp_path):
    rng = random.Random(4)
    items = [item(i, [rng.choice([-1, 0.0, 0.5, 1.0]) for _ in range(5)],
                  dataset=f"ds{i % 3}") for i in range(40)]
    pairs, stats = build_pairs(items, limit=30, gold_rate=0.5)
    assert pairs and stats["model_pairs"] and stats["gold_pairs"]
    path = tmp_path / "out" / "IEFeedback.json"
    path.parent.mkdir()
    path.write_text("stale")
    assert write_feedback(pairs, path) == path
    assert json.loads(path.read_text(encoding="utf-8")) == pairs  # one JSON array
    assert sorted(p.name for p in path.parent.iterdir()) == ["IEFeedback.json"]  # no temp left
    got = list(read_dpo(path))
    assert len(got) == len(pairs)
    for g, p in zip(got, pairs):
        assert (g["dataset"], g["id"]) == (p["dataset"], str(p["id"]))
        assert g["chosen"] == p["chosen"] and g["rejected"] == p["rejected"]
        assert g["chosen"][:-1] == g["rejected"][:-1] == p["messages"][:-1]
        assert g["chosen"][-1]["role"] == "assistant"
    assert math.isclose(stats["gold_fraction"], stats["gold_pairs"] / len(pairs))
