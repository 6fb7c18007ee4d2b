"""Benchmark packing: the native helper (ie_engine.data._packer) vs its NumPy twin.

    python -m ie_engine.bench.bench_pack                    # 10M ADELIE-like documents, seq_len 2048
    python -m ie_engine.bench.bench_pack --n 1000000 --rep 5

Steps: pack_bfd (best fit decreasing alone), pack_documents (best fit + the repair of the
emptiest rows: what data/prepare.py runs) and build_row_index. Both backends are checked to
give the same rows before anything is timed. Reported per backend and step: median seconds,
nanoseconds and million documents per second, extra peak resident memory
(bench.common.measure_peak_cpu), and for the packing steps the pad fraction next to that of the
ideal row count ceil(total / seq_len). The packer is one sequential pass (a heap and a bit tree
per document; the repair a bitset subset-sum per re-packed row), so its hardware figure is
documents per second on one core, not FLOP/s. 'speedup' is numpy_s / native_s (target >= 5).
Rows are appended to bench/results/pack.jsonl with date, git sha, device and versions.
"""
from __future__ import annotations

import argparse

import numpy as np

from ie_engine.bench.common import append_results, measure_peak_cpu, time_cpu
from ie_engine.data import pack


def adelie_like_lengths(n: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic ADELIE conversation lengths, int64 (n,) in [1, seq_len].

    A lognormal mix: 90% around 300 tokens (most between 100 and 800), 10% around 1100 with a
    tail that reaches seq_len.
    """
    short = rng.lognormal(np.log(300), 0.5, n)
    long = rng.lognormal(np.log(1100), 0.45, n)
    lengths = np.where(rng.random(n) < 0.9, short, long)
    return np.clip(lengths.astype(np.int64), 1, seq_len)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000_000, help="number of documents")
    p.add_argument("--seq-len", type=int, default=2048, help="row capacity in tokens")
    p.add_argument("--rep", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not pack.NATIVE:
        raise SystemExit("ie_engine.data._packer is not built (pip install -e .); nothing to compare")

    lengths = adelie_like_lengths(args.n, args.seq_len, np.random.default_rng(args.seed))
    packers = {"pack_bfd": pack.pack_bfd, "pack_documents": pack.pack_documents}
    n_rows = {}
    for step, packer in packers.items():  # rows: pack_documents', which prepare indexes
        rows = packer(lengths, args.seq_len, backend="native")
        np.testing.assert_array_equal(rows, packer(lengths, args.seq_len, backend="numpy"))
        n_rows[step] = int(rows.max()) + 1
    total = int(lengths.sum())
    ideal_rows = -(-total // args.seq_len)
    shape = f"n={args.n} seq_len={args.seq_len}"

    results, seconds = [], {}
    steps = [(step, lambda b, p=packer: p(lengths, args.seq_len, backend=b))
             for step, packer in packers.items()]
    steps.append(("build_row_index", lambda b: pack.build_row_index(rows, lengths, backend=b)))
    for step, fn in steps:
        for backend in ("native", "numpy"):
            ms = time_cpu(lambda: fn(backend), warmup=1 if backend == "native" else 0, rep=args.rep)
            seconds[step, backend] = ms / 1e3
            row = {"step": step, "backend": backend, "shape": shape, "seconds": ms / 1e3,
                   "ns_per_doc": ms * 1e6 / args.n, "mdocs_per_s": args.n / ms / 1e3,
                   "peak_mb": measure_peak_cpu(lambda: fn(backend)) / 2**20}
            if step in n_rows:
                row |= {"rows": n_rows[step],
                        "pad_fraction": 1 - total / (n_rows[step] * args.seq_len),
                        "ideal_pad_fraction": 1 - total / (ideal_rows * args.seq_len)}
            results.append(row)
        for row in results[-2:]:
            row["speedup"] = seconds[step, "numpy"] / seconds[step, "native"]
    append_results("pack", results)


if __name__ == "__main__":
    main()
