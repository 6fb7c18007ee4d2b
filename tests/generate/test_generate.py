"""The generation engine: greedy parity with transformers, cached decode = full forward,
reproducible sampling whatever the batching, one prefill per prompt, stopping."""
import collections

import pytest
import torch

from ie_engine.engine.generate.config import GenerateSection
from ie_engine.engine.generate.generator import Request, build_generation_model, generate
from ie_engine.engine.model.attention import KVCache
from ie_engine.engine.model.hf_checkpoint import save_hf

from gen_utils import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
V = 211


def random_prompts(lengths, seed=0, vocab=V):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def run(model, prompts, settings, n=1, tokenizer=None, eos_id=-1, seed=0, order=None):
    """{(prompt index, sample index): Completion}."""
    order = order or range(len(prompts))
    requests = [Request(prompts[i], list(range(n)), ("test", str(i)), tag=i) for i in order]
    out = {}
    for batch in generate(model, requests, settings, tokenizer, seed=seed, eos_id=eos_id):
        for c in batch:
            key = (c.request.tag, c.sample_index)
            assert key not in out
            out[key] = c
    assert len(out) == n * len(prompts)
    return out


@pytest.mark.parametrize("n_kv_heads", [4, 2])
@pytest.mark.parametrize("batch_size", [16, 2])
def test_greedy_matches_transformers_generate(tmp_path, n_kv_heads, batch_size):
    transformers = pytest.importorskip("transformers")
    save_hf(tiny_model(V, n_kv_heads), tmp_path)
    ours = build_generation_model(str(tmp_path), torch.device("cpu"), torch.float32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    prompts = random_prompts([5, 17, 9, 1, 30, 12])
    new = 24
    got = run(ours, prompts, GenerateSection(max_new_tokens=new, batch_size=batch_size))
    T = max(map(len, prompts))
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # transformers wants left padding
        ids[i, T - len(p):] = torch.tensor(p)
        attn[i, T - len(p):] = 1
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=new,
                          eos_token_id=None, pad_token_id=0)
    for i in range(len(prompts)):
        assert got[(i, 0)].token_ids == ref[i, T:].tolist(), i
        assert got[(i, 0)].finish_reason == "length"


@pytest.mark.parametrize("kv_len", ["used", "all"])
def test_cached_decode_logits_equal_a_full_forward(kv_len):
    model = tiny_model(V, n_kv_heads=2, max_seq_len=64)
    prompts = random_prompts([3, 11, 7], seed=1)
    cont = random_prompts([6, 6, 6], seed=2)
    B, T, cfg = len(prompts), max(map(len, prompts)), model.cfg
    slots = T + 6
    cache = KVCache.allocate(cfg.n_layers, B, slots, cfg.n_kv_heads, cfg.head_dim, torch.float32, "cpu")
    ids = torch.zeros(B, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p)
    lens = torch.tensor([len(p) for p in prompts])
    with torch.no_grad():
        got = [model(ids, cache=cache)[torch.arange(B), lens - 1]]  # prefill: last real position
        for t in range(6):
            pos = lens + t
            window = int(pos.max()) + 1 if kv_len == "used" else slots
            step = torch.tensor([c[t] for c in cont])[:, None]
            got.append(model(step, positions=pos[:, None], cache=cache.view(B, window))[:, 0])
        for i in range(B):
            full = model(torch.tensor([prompts[i] + cont[i]]))[0]  # (L + 6, V)
            want = full[len(prompts[i]) - 1:]
            have = torch.stack([g[i] for g in got])
            assert ((have - want).norm() / want.norm()).item() < 1e-5, i


def test_sampling_does_not_depend_on_batching_or_order():
    model = tiny_model(V)
    prompts = random_prompts([4, 13, 8, 21, 2, 9, 16], seed=3)
    base = dict(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=20)
    a = run(model, prompts, GenerateSection(batch_size=1, **base), n=3, seed=7)
    b = run(model, prompts, GenerateSection(batch_size=7, **base), n=3, seed=7, order=[6, 2, 4, 0, 1, 5, 3])
    c = run(model, prompts, GenerateSection(batch_size=2, prefill_tokens=10, **base), n=3, seed=7)
    for key in a:
        assert a[key].token_ids == b[key].token_ids == c[key].token_ids, key
    # the samples of a prompt differ from each other, and another seed gives other samples
    assert len({tuple(a[(3, s)].token_ids) for s in range(3)}) == 3
    d = run(model, prompts, GenerateSection(batch_size=7, **base), n=3, seed=8)
    assert sum(a[k].token_ids != d[k].token_ids for k in a) >= len(a) - 1


def test_n_samples_share_one_prefill(monkeypatch):
    model = tiny_model(V)
    prompts = random_prompts([5, 9, 14, 3], seed=4)
    rows = collections.Counter()
    forward = model.forward

    def counting(input_ids, *args, **kwargs):
        rows["prefill" if input_ids.shape[1] > 1 or kwargs.get("positions") is None else "decode"] += input_ids.shape[0]
        return forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    out = run(model, prompts, GenerateSection(temperature=1.0, max_new_tokens=10, batch_size=2), n=5)
    assert rows["prefill"] == len(prompts)  # each prompt prefilled once, not once per sample
    assert all(len(out[(i, s)].token_ids) == 10 for i in range(4) for s in range(5))


def test_eos_stops_a_sample_and_the_budget_respects_max_seq_len():
    model = tiny_model(V, max_seq_len=40)
    prompts = random_prompts([5, 9, 36], seed=5)
    free = run(model, prompts, GenerateSection(max_new_tokens=12))
    eos = free[(0, 0)].token_ids[4]  # a token greedy decoding of prompt 0 reaches at step 5
    out = run(model, prompts, GenerateSection(max_new_tokens=12), eos_id=eos)
    ids = free[(0, 0)].token_ids
    assert out[(0, 0)].token_ids == ids[:ids.index(eos) + 1] and out[(0, 0)].finish_reason == "stop"
    long = out[(2, 0)]  # 36 prompt tokens under max_seq_len 40: 4 new tokens at most
    assert len(long.token_ids) <= 4 and (long.finish_reason == "stop" or len(long.token_ids) == 4)


def test_stop_strings_cut_the_text_and_count_the_tokens_up_to_them(tokenizer):
    model = tiny_model(tokenizer.vocab_size)
    prompts = [tokenizer.encode("Find the entities in : Ada Lovelace joined Acme Labs")[:12],
               tokenizer.encode("What is 2 + 3 ?")]
    settings = GenerateSection(max_new_tokens=30)
    free = run(model, prompts, settings, tokenizer=tokenizer, eos_id=tokenizer.eos_id)
    text = free[(0, 0)].text
    assert len(text) > 12
    stop = text[6:9]
    out = run(model, prompts, GenerateSection(max_new_tokens=30, stop=[stop, "\x00never"]), tokenizer=tokenizer)
    got = out[(0, 0)]
    assert got.text == text[:text.find(stop)] and got.finish_reason == "stop"
    m = len(got.token_ids)  # the fewest tokens whose text holds the stop string
    assert got.token_ids == free[(0, 0)].token_ids[:m]
    assert stop in tokenizer.decode(got.token_ids) and stop not in tokenizer.decode(got.token_ids[:-1])
    other = out[(1, 0)]
    if stop not in free[(1, 0)].text:
        assert other.text == free[(1, 0)].text and other.token_ids == free[(1, 0)].token_ids


def test_requests_with_some_samples_done_generate_only_the_rest():
    model = tiny_model(V)
    prompts = random_prompts([6, 10], seed=6)
    settings = GenerateSection(temperature=1.0, max_new_tokens=8)
    full = run(model, prompts, settings, n=4)
    requests = [Request(prompts[0], [1, 3], ("test", "0"), tag=0), Request(prompts[1], [2], ("test", "1"), tag=1)]
    part = {(c.request.tag, c.sample_index): c for b in generate(model, requests, settings, eos_id=-1) for c in b}
    assert sorted(part) == [(0, 1), (0, 3), (1, 2)]
    assert all(part[k].token_ids == full[k].token_ids for k in part)
