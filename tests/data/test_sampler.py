"""RowSampler: deterministic, disjoint across ranks, token-balanced, and resumable to the micro-batch.

References: the epoch permutation is checked against its definition (PCG64 seeded with
(seed, epoch)); balance is compared with the naive split (consecutive chunks of the
permutation per rank); resuming is compared with the uninterrupted run of the same sampler.
"""
import json

import numpy as np
import pytest

from ie_engine.data.sampler import RowSampler


def _rows(n: int, seed: int = 0) -> np.ndarray:
    """Packed-row token counts: mostly nearly full 2048-token rows, some half-empty ones."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < 0.8, rng.integers(1900, 2049, n), rng.integers(1, 2049, n))


def _take(sampler: RowSampler, k: int) -> list[list[int]]:
    return [next(sampler) for _ in range(k)]


def _samplers(row_tokens, **kw) -> list[RowSampler]:
    return [RowSampler(row_tokens, world_size=kw["world_size"], rank=r,
                       **{k: v for k, v in kw.items() if k != "world_size"})
            for r in range(kw["world_size"])]


def test_deterministic_and_seed_and_epoch_dependent():
    rows = _rows(203)
    kw = dict(rows_per_micro_batch=3, world_size=2, rank=1, grad_accum=2)
    a, b = RowSampler(rows, seed=7, **kw), RowSampler(rows, seed=7, **kw)
    per_epoch = a.steps_per_epoch * a.grad_accum
    first, second = _take(a, per_epoch), _take(a, per_epoch)
    assert first == _take(b, per_epoch)
    assert first != second  # epoch 1 is a different order
    assert first != _take(RowSampler(rows, seed=8, **kw), per_epoch)
    for epoch in (0, 1, 5):
        expected = np.random.Generator(np.random.PCG64([7, epoch])).permutation(len(rows))
        np.testing.assert_array_equal(a.permutation(epoch), expected)


@pytest.mark.parametrize("world_size,grad_accum,rows_per_micro_batch,n_rows",
                         [(1, 1, 1, 5), (1, 3, 2, 31), (3, 2, 4, 101), (4, 1, 5, 87)])
def test_ranks_partition_each_step_of_the_permutation(world_size, grad_accum,
                                                      rows_per_micro_batch, n_rows):
    rows = _rows(n_rows, seed=1)
    samplers = _samplers(rows, world_size=world_size, grad_accum=grad_accum,
                         rows_per_micro_batch=rows_per_micro_batch, seed=3)
    per_step = world_size * grad_accum * rows_per_micro_batch
    steps = samplers[0].steps_per_epoch
    assert steps == n_rows // per_step
    for epoch in range(2):
        perm = np.random.Generator(np.random.PCG64([3, epoch])).permutation(n_rows)
        for step in range(steps):
            got = []
            for s in samplers:
                batches = _take(s, grad_accum)
                assert all(len(b) == rows_per_micro_batch for b in batches)
                got += [r for b in batches for r in b]
            assert len(set(got)) == len(got) == per_step  # no row twice in a step
            assert set(got) == set(perm[step * per_step:(step + 1) * per_step].tolist())
    assert all(s.state_dict()["epoch"] == 2 and s.state_dict()["step"] == 0 for s in samplers)


@pytest.mark.parametrize("world_size,grad_accum,rows_per_micro_batch,mix",
                         [(4, 2, 4, 0.8), (3, 1, 5, 0.0), (8, 1, 2, 0.5)])
def test_ranks_get_balanced_tokens(world_size, grad_accum, rows_per_micro_batch, mix):
    rng = np.random.default_rng(2)
    n = 997  # full rows with probability `mix`, else uniform in [1, 2048]
    rows = np.where(rng.random(n) < mix, rng.integers(1900, 2049, n), rng.integers(1, 2049, n))
    samplers = _samplers(rows, world_size=world_size, grad_accum=grad_accum,
                         rows_per_micro_batch=rows_per_micro_batch, seed=0)
    per_step = world_size * grad_accum * rows_per_micro_batch
    perm = samplers[0].permutation(0)
    spreads, naive_spreads = [], []
    for step in range(samplers[0].steps_per_epoch):
        tokens = [sum(int(rows[r]) for b in _take(s, grad_accum) for r in b) for s in samplers]
        step_rows = rows[perm[step * per_step:(step + 1) * per_step]]
        naive_tokens = step_rows.reshape(world_size, -1).sum(axis=1)  # consecutive chunks
        spreads.append(max(tokens) - min(tokens))
        naive_spreads.append(int(naive_tokens.max() - naive_tokens.min()))
        # Greedy by decreasing size keeps ranks within one row of each other.
        assert spreads[-1] <= step_rows.max(), f"step {step}: spread {spreads[-1]} tokens"
    assert sum(spreads) < sum(naive_spreads), (sum(spreads), sum(naive_spreads))


@pytest.mark.parametrize("consumed", [0, 1, 4, 5, 7, 8, 13, 24, 29])
def test_resume_continues_with_the_next_micro_batch(consumed):
    rows = _rows(53, seed=4)
    kw = dict(rows_per_micro_batch=2, world_size=3, grad_accum=4, seed=11)  # 2 steps x 4 micro
    for rank in range(3):
        run = RowSampler(rows, rank=rank, **kw)
        _take(run, consumed)  # mid-step, step boundary, epoch boundary, later epochs
        state = json.loads(json.dumps(run.state_dict()))  # survives a checkpoint round trip
        resumed = RowSampler(rows, rank=rank, **kw)
        resumed.load_state_dict(state)
        assert _take(resumed, 11) == _take(run, 11)
    rank0 = RowSampler(rows, rank=0, **kw)  # one rank's state resumes the others
    _take(rank0, consumed)
    rank2, uninterrupted = RowSampler(rows, rank=2, **kw), RowSampler(rows, rank=2, **kw)
    rank2.load_state_dict(rank0.state_dict())
    _take(uninterrupted, consumed)
    assert _take(rank2, 5) == _take(uninterrupted, 5)


def test_state_must_match():
    rows = _rows(40)
    state = RowSampler(rows, 2, world_size=2, seed=1).state_dict()
    for field, other in [("seed", RowSampler(rows, 2, world_size=2, seed=2)),
                         ("world_size", RowSampler(rows, 2, world_size=4, seed=1)),
                         ("grad_accum", RowSampler(rows, 2, world_size=2, seed=1, grad_accum=2)),
                         ("rows_per_micro_batch", RowSampler(rows, 3, world_size=2, seed=1)),
                         ("num_rows", RowSampler(rows[:-1], 2, world_size=2, seed=1))]:
        with pytest.raises(ValueError, match=field):
            other.load_state_dict(state)
    with pytest.raises(ValueError, match="step=10"):
        RowSampler(rows, 2, world_size=2, seed=1).load_state_dict({**state, "step": 10})


def test_bad_arguments():
    with pytest.raises(ValueError, match="fewer than one global step"):
        RowSampler(_rows(7), 2, world_size=2, grad_accum=2)
    with pytest.raises(ValueError, match="rank 2"):
        RowSampler(_rows(7), 1, world_size=2, rank=2)
    with pytest.raises(ValueError, match="rows_per_micro_batch"):
        RowSampler(_rows(7), 0)
    with pytest.raises(ValueError, match="row 3 has a negative token count"):
        RowSampler(np.array([5, 6, 7, -2, 9]), 1)
    with pytest.raises(ValueError, match="1-D integer"):
        RowSampler(np.ones((3, 3), dtype=np.int64), 1)
