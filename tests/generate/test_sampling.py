"""engine/generate/sampling.py: the 32-bit hash against Python integers, Gumbel-max frequencies against
softmax, top-k / top-p against a sorted-list reference, keys."""
import math

import pytest
import torch

from ie_engine.engine.generate.sampling import _mul32, filter_logits, hash32, sample_key, sample_next


def hash32_py(x: int) -> int:
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)


def test_hash_is_exact_on_the_whole_32_bit_range():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randint(0, 2**32, (5000,), generator=g, dtype=torch.int64),
                   torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1])])
    assert hash32(x).tolist() == [hash32_py(v) for v in x.tolist()]
    assert _mul32(x, 0xFFFFFFFF).tolist() == [(v * 0xFFFFFFFF) & 0xFFFFFFFF for v in x.tolist()]


def test_gumbel_max_draws_from_the_softmax():
    torch.manual_seed(0)
    logits = torch.randn(7) * 1.5
    R = 40000
    keys = torch.tensor([sample_key(0, "d", str(i), 0) for i in range(R)], dtype=torch.int64)
    for temperature in (1.0, 0.6):
        picks = sample_next(logits.expand(R, -1), keys, torch.full((R,), 3), temperature)
        freq = torch.bincount(picks, minlength=7).double() / R
        want = (logits.double() / temperature).softmax(-1)
        assert (freq - want).abs().max() < 4 * math.sqrt(0.25 / R) + 1e-3, (freq, want)


def test_noise_depends_on_key_and_counter_only():
    logits = torch.zeros(6, 50)
    keys = torch.tensor([sample_key(1, "d", "x", s) for s in range(6)], dtype=torch.int64)
    a = sample_next(logits, keys, torch.arange(6), 1.0)
    b = sample_next(logits[[5, 0, 3]], keys[[5, 0, 3]], torch.arange(6)[[5, 0, 3]], 1.0)
    assert a[[5, 0, 3]].tolist() == b.tolist()
    assert sample_key(0, "d", "1", 0) != sample_key(0, "d", "1", 1) != sample_key(1, "d", "1", 0)


def filter_ref(row: list[float], top_k: int, top_p: float) -> set[int]:
    """The kept token ids, from a plain sorted list."""
    order = sorted(range(len(row)), key=lambda j: -row[j])
    if top_k:
        order = [j for j in order if row[j] >= row[order[top_k - 1]]]
    z = sum(math.exp(row[j]) for j in order)
    kept, mass = [], 0.0
    for j in order:
        if mass >= top_p - 1e-12:
            break
        kept.append(j)
        mass += math.exp(row[j]) / z
    return set(kept)


@pytest.mark.parametrize("top_k,top_p", [(0, 0.5), (5, 1.0), (7, 0.8), (0, 0.99), (1, 1.0), (3, 0.01)])
def test_top_k_top_p_keep_what_the_reference_keeps(top_k, top_p):
    torch.manual_seed(top_k)
    logits = torch.randn(9, 31, dtype=torch.float64).float()
    out = filter_logits(logits, top_k, top_p)
    for i in range(9):
        kept = set(torch.nonzero(out[i] > float("-inf")).flatten().tolist())
        assert kept == filter_ref(logits[i].tolist(), top_k, top_p), i
        assert torch.equal(out[i][list(kept)], logits[i][list(kept)])


def test_greedy_is_argmax_and_sampling_stays_in_the_nucleus():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9], [5.0, 5.0, 0.0, 0.0]])
    keys = torch.tensor([sample_key(0, "d", "a", 0)] * 2, dtype=torch.int64)
    assert sample_next(logits, keys, torch.zeros(2, dtype=torch.int64), 0.0).tolist() == [1, 0]
    R = 2000
    keys = torch.tensor([sample_key(0, "d", str(i), 0) for i in range(R)], dtype=torch.int64)
    picks = sample_next(logits[:1].expand(R, -1), keys, torch.zeros(R, dtype=torch.int64), 1.0, top_k=2)
    assert set(picks.tolist()) == {1, 3}
