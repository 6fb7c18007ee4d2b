"""pytest-benchmark view of bench_pack at a small size (200k documents, seq_len 2048):

    python -m pytest bench/test_bench_pack.py --benchmark-group-by=group

Each group times the native helper and the NumPy twin of one step (pack_bfd, pack_documents,
build_row_index). Before timing, each backend's
output is checked against the NumPy twin, so a benchmark of a wrong packer fails instead of
reporting a time.
"""
import functools

import numpy as np
import pytest

from ie_engine.bench.bench_pack import adelie_like_lengths
from ie_engine.data import pack

N, SEQ_LEN = 200_000, 2048


@functools.lru_cache(maxsize=None)
def inputs() -> tuple[np.ndarray, np.ndarray]:
    lengths = adelie_like_lengths(N, SEQ_LEN, np.random.default_rng(0))
    return lengths, pack.pack_bfd_ref(lengths, SEQ_LEN)


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_bench_pack_bfd(benchmark, backend):
    if backend == "native" and not pack.NATIVE:
        pytest.skip("ie_engine.data._packer is not built (pip install -e .)")
    lengths, rows = inputs()
    np.testing.assert_array_equal(pack.pack_bfd(lengths, SEQ_LEN, backend=backend), rows)
    benchmark.group = f"pack_bfd n={N}"
    benchmark(pack.pack_bfd, lengths, SEQ_LEN, backend=backend)


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_bench_pack_documents(benchmark, backend):
    if backend == "native" and not pack.NATIVE:
        pytest.skip("ie_engine.data._packer is not built (pip install -e .)")
    lengths, _ = inputs()
    want = pack.pack_documents_ref(lengths, SEQ_LEN)
    np.testing.assert_array_equal(pack.pack_documents(lengths, SEQ_LEN, backend=backend), want)
    benchmark.group = f"pack_documents n={N}"
    benchmark(pack.pack_documents, lengths, SEQ_LEN, backend=backend)


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_bench_build_row_index(benchmark, backend):
    if backend == "native" and not pack.NATIVE:
        pytest.skip("ie_engine.data._packer is not built (pip install -e .)")
    lengths, rows = inputs()
    want = pack.build_row_index_ref(rows, lengths)
    for got, ref in zip(pack.build_row_index(rows, lengths, backend=backend), want):
        np.testing.assert_array_equal(got, ref)
    benchmark.group = f"build_row_index n={N}"
    benchmark(pack.build_row_index, rows, lengths, backend=backend)
