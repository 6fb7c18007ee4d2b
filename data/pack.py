"""Packing: put whole documents into fixed-length rows, best-fit-decreasing (BFD) then a repair.

Contract (both backends give bit-identical output, tests/data/test_pack.py checks it):

- `pack_bfd(lengths, seq_len)` takes the documents in decreasing length, ties by increasing
  document index (a stable sort; this is "packing order"), and puts each one into the open row
  with the *least* remaining space that still fits it; among rows with equal remaining space it
  takes the *lowest row id*. If no open row fits, it opens a new one. Rows are numbered 0..R-1 in
  the order they are opened. A document is never split, so every row holds <= seq_len tokens.
- `pack_documents(lengths, seq_len, max_repair_rows)` is what data/prepare.py uses: `pack_bfd`,
  then a repair of its emptiest rows, which is where BFD's padding is:
  1. the rows that are not full, emptiest first (ties: lower row id), at most `max_repair_rows`
     of them, are dissolved (fewer than 2: nothing to repair);
  2. their documents are re-packed one new row at a time (minimum bin slack): the longest pending
     document (lowest index among equal lengths) opens the row, and the rest of the row is a
     subset of the pending documents with the largest total that fits. The subset comes from a
     bitset subset-sum over the distinct pending lengths, longest first, each length used at
     most min(pending, room // length) times, stopping as soon as the room is filled exactly;
     `first_step[t]` is the step (length) whose pass first made total t reachable, and walking
     back from the best total t (t -= that length) names the lengths, each taking its
     lowest-index pending document;
  3. if that made fewer rows than it dissolved, the result is kept (else BFD's rows are), and
     the rows are renumbered in packing order of their first document, which is BFD's
     numbering for the rows it keeps.
- `build_row_index(row_ids, lengths)` turns the per-document row ids into a CSR layout: the
  documents of row r are `doc_order[row_offsets[r]:row_offsets[r+1]]`, in increasing index.

Why: ADELIE conversations are mostly a few hundred tokens, so BFD alone fills 2048-token rows to
0.3-1.7% padding while keeping every conversation whole (attention only needs the document
boundaries inside a row; data/cache.py documents the packed token cache). Lengths cluster (one
template, many records), which leaves BFD rows with gaps smaller than any document left; filling
rows exactly from the documents of the emptiest rows closes most of that. Llama-2 tokens of the
six ADELIE sample files at seq_len 2048: 1,389 rows (1.71% padding) -> 1,366, the lower bound
(0.06%); bench_prepare's 400k conversations: 0.67% -> 0.02%.

Cost: BFD keeps rows in buckets by remaining capacity (integers in [0, seq_len]; a min-heap of
row ids per bucket gives the lowest id), and a bitmask over the buckets finds the smallest
non-empty bucket >= len. Per document that is O(log n) heap work plus one find-next-set-bit; the
native helper (data/_native/packer.cpp, module `ie_engine.data._packer`) uses a 64-ary bit tree for it
(O(log_64 seq_len)), the NumPy twin a CPython big integer (seq_len/64 machine words per
operation, ~32 for seq_len 2048). The repair costs at most O(seq_len^2 / 64) word operations per
dissolved row, and REPAIR_ROWS bounds the rows (native: ~0.1 s at the default, next to ~0.3 s of
BFD for 10M documents). The twin is the reference and the fallback when the extension is not
built; `NATIVE` says whether it is, `backend=` forces one.
"""
from __future__ import annotations

import heapq

import numpy as np

try:
    from ie_engine.data import _packer  # built by CMakeLists.txt through scikit-build-core
    NATIVE: bool = True
except ImportError:  # not built (plain checkout): the NumPy twin below is used
    _packer = None
    NATIVE = False

_BACKENDS = ("auto", "native", "numpy")
REPAIR_ROWS = 1 << 14  # rows the repair may re-pack (bounds its time; see module docstring)


def _use_native(backend: str) -> bool:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "native" and not NATIVE:
        raise ImportError("backend='native' but the extension ie_engine.data._packer is not built; "
                          "build it with `pip install -e .` (the NumPy twin is ~20x slower)")
    return backend == "native" or (backend == "auto" and NATIVE)


def _check_lengths(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lengths.shape}")
    if lengths.size and not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
    if int(seq_len) != seq_len or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    bad = np.flatnonzero((lengths < 1) | (lengths > seq_len))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"document {i} has length {int(lengths[i])}, "
                         f"outside [1, seq_len={seq_len}] ({bad.size} such documents)")
    return lengths


def _bfd_ref(lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, list[int]]:
    """Best fit decreasing on checked lengths -> (row id per document, each row's opener)."""
    order = np.argsort(-lengths, kind="stable")  # decreasing length, ties by increasing index
    row_of = [0] * lengths.size
    opener: list[int] = []  # the document that opened each row: its first in packing order
    buckets: list[list[int]] = [[] for _ in range(seq_len + 1)]  # remaining -> min-heap of rows
    mask = 0  # bit c set <=> buckets[c] is non-empty
    for doc, need in zip(order.tolist(), lengths[order].tolist()):
        fits = mask >> need
        if fits:  # smallest remaining capacity >= need, then its lowest row id
            room = need + (fits & -fits).bit_length() - 1
            heap = buckets[room]
            row = heapq.heappop(heap)
            if not heap:
                mask ^= 1 << room
        else:
            row, room = len(opener), seq_len
            opener.append(doc)
        row_of[doc] = row
        room -= need
        if room:  # a full row can take nothing more (lengths >= 1): never store it
            if not buckets[room]:
                mask |= 1 << room
            heapq.heappush(buckets[room], row)
    return np.array(row_of, dtype=np.int64), opener


def pack_bfd_ref(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """NumPy/Python twin of the native best fit decreasing (same contract, module docstring)."""
    return _bfd_ref(_check_lengths(lengths, seq_len), seq_len)[0]


def pack_bfd(lengths: np.ndarray, seq_len: int, backend: str = "auto") -> np.ndarray:
    """Best-fit-decreasing row id per document, int64 (n,); rows numbered in opening order.

    Documents go in decreasing length (ties: increasing index) into the open row with the least
    remaining space that fits; among equal remaining space, the lowest row id. Raises ValueError
    naming the first document whose length is outside [1, seq_len].
    """
    lengths = _check_lengths(lengths, seq_len)
    if _use_native(backend):
        return _packer.pack_bfd(lengths, int(seq_len))
    return pack_bfd_ref(lengths, seq_len)


def _fill_row(top: int, seq_len: int, avail: int, pending) -> list[int]:
    """Lengths that fill seq_len - top best: bitset subset-sum, longest first (module docstring).

    avail: bit v set <=> a document of length v is pending; pending(v): how many. A total t is
    walked back through the first step whose reachable set holds it (`first_step[t]`).
    """
    c = seq_len - top
    full = (1 << (c + 1)) - 1
    reach, steps, after = 1, [], []  # after[i]: reachable totals after steps[i]
    lens = avail & full
    while lens and not reach >> c & 1:
        v = lens.bit_length() - 1
        lens ^= 1 << v
        for _ in range(min(pending(v), c // v)):
            fresh = (reach << v) & full & ~reach
            if not fresh:
                break
            reach |= fresh
            if reach >> c & 1:
                break
        steps.append(v)
        after.append(reach)
    t = reach.bit_length() - 1
    out = []
    while t:
        lo, hi = 0, len(after) - 1  # the first step whose reachable set holds t (sets only grow)
        while lo < hi:
            mid = (lo + hi) // 2
            if after[mid] >> t & 1:
                hi = mid
            else:
                lo = mid + 1
        out.append(steps[lo])
        t -= steps[lo]
    return out


def _repair_ref(lengths: np.ndarray, row_of: np.ndarray, opener: list[int], seq_len: int,
                max_repair_rows: int) -> np.ndarray:
    """Steps 1-3 of the repair (module docstring) on best fit's rows; returns new row ids."""
    n_rows = len(opener)
    fill = np.bincount(row_of, weights=lengths, minlength=n_rows).astype(np.int64)  # (R,)
    # 1. not full, emptiest first, ties by lower row id; at most max_repair_rows
    cand = np.flatnonzero(fill < seq_len)
    cand = cand[np.argsort(fill[cand], kind="stable")]
    k = min(len(cand), max_repair_rows)
    if k < 2:  # one row re-packed alone comes back as itself
        return row_of
    dissolved = np.zeros(n_rows, dtype=bool)
    dissolved[cand[:k]] = True
    # 2. pending documents by (length, index): those of length v are pool[start[v]:start[v+1]]
    pool = np.flatnonzero(dissolved[row_of])
    pool = pool[np.argsort(lengths[pool], kind="stable")]
    start = np.zeros(seq_len + 2, dtype=np.int64)
    np.cumsum(np.bincount(lengths[pool], minlength=seq_len + 1), out=start[1:])
    start, head = start.tolist(), start[:-1].tolist()  # head[v]: next pending of length v
    avail = 0  # bit v set <=> a document of length v is pending
    for v in np.unique(lengths[pool]).tolist():
        avail |= 1 << v
    new_row = [0] * len(pool)  # new row of pool[j]
    new_opener: list[int] = []  # pool position of each new row's first document

    def take(v: int, row: int) -> None:  # the next pending document of length v joins row
        nonlocal avail
        new_row[head[v]] = row
        head[v] += 1
        if head[v] == start[v + 1]:
            avail ^= 1 << v

    pending = lambda v: start[v + 1] - head[v]  # noqa: E731
    while avail:  # one new row per iteration, opened by the longest pending document
        top = avail.bit_length() - 1
        row = len(new_opener)
        new_opener.append(head[top])
        take(top, row)
        for v in _fill_row(top, seq_len, avail, pending):
            take(v, row)
    n_new = len(new_opener)
    if n_new >= k:
        return row_of  # no fewer rows: keep best fit's
    # 3. renumber by each row's first document in packing order: kept rows are in that order by
    #    id (best fit opens rows in packing order), new rows in the order they were made; merge
    #    them on the key (seq_len - length, index) of that document
    kept = np.flatnonzero(~dissolved)
    key = lambda docs: (seq_len - lengths[docs]) * len(lengths) + docs  # noqa: E731
    kept_key, new_key = key(np.asarray(opener)[kept]), key(pool[new_opener])
    renum = np.empty(n_rows + n_new, dtype=np.int64)  # old ids, then new rows at n_rows + j
    renum[kept] = np.arange(len(kept)) + np.searchsorted(new_key, kept_key)
    renum[n_rows:] = np.arange(n_new) + np.searchsorted(kept_key, new_key)
    ids = row_of.copy()
    ids[pool] = np.asarray(new_row, dtype=np.int64) + n_rows
    return renum[ids]


def pack_documents_ref(lengths: np.ndarray, seq_len: int,
                       max_repair_rows: int = REPAIR_ROWS) -> np.ndarray:
    """NumPy/Python twin of the native pack + repair (same contract, see the module docstring)."""
    lengths = _check_lengths(lengths, seq_len)
    return _repair_ref(lengths, *_bfd_ref(lengths, seq_len), int(seq_len), int(max_repair_rows))


def pack_documents(lengths: np.ndarray, seq_len: int, backend: str = "auto",
                   max_repair_rows: int = REPAIR_ROWS) -> np.ndarray:
    """Row id per document, int64 (n,): `pack_bfd`, then the repair of its emptiest rows.

    The repair re-packs the documents of the least-filled rows (at most max_repair_rows of them;
    0 turns it off) one exactly filled row at a time and keeps the result when it has fewer rows
    (module docstring). Rows are numbered in packing order of their first (longest) document.
    Raises ValueError naming the first document whose length is outside [1, seq_len].
    """
    lengths = _check_lengths(lengths, seq_len)
    if int(max_repair_rows) != max_repair_rows or max_repair_rows < 0:
        raise ValueError(f"max_repair_rows must be an integer >= 0, got {max_repair_rows!r}")
    if _use_native(backend):
        return _packer.pack_documents(lengths, int(seq_len), int(max_repair_rows))
    return pack_documents_ref(lengths, seq_len, max_repair_rows)


def _check_row_ids(row_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    row_ids = np.asarray(row_ids)
    if row_ids.ndim != 1 or np.shape(lengths) != row_ids.shape:
        raise ValueError(f"row_ids {row_ids.shape} and lengths {np.shape(lengths)} must be the "
                         "same 1-D shape")
    if row_ids.size and not np.issubdtype(row_ids.dtype, np.integer):
        raise ValueError(f"row_ids must be integers, got dtype {row_ids.dtype}")
    row_ids = np.ascontiguousarray(row_ids, dtype=np.int64)
    if row_ids.size and row_ids.min() < 0:
        i = int(np.argmax(row_ids < 0))
        raise ValueError(f"document {i} has negative row id {int(row_ids[i])}")
    return row_ids


def build_row_index_ref(row_ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of the native CSR builder (same contract as `build_row_index`)."""
    row_ids = _check_row_ids(row_ids, lengths)
    n_rows = int(row_ids.max()) + 1 if row_ids.size else 0
    row_offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_ids, minlength=n_rows), out=row_offsets[1:])
    doc_order = np.argsort(row_ids, kind="stable").astype(np.int64)  # stable: increasing doc index
    return row_offsets, doc_order


def build_row_index(row_ids: np.ndarray, lengths: np.ndarray,
                    backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """CSR layout of a packing: (row_offsets (R+1,), doc_order (n,)), both int64.

    R = max(row_ids) + 1 (0 for no documents). The documents of row r are
    doc_order[row_offsets[r]:row_offsets[r+1]], in increasing document index. `lengths` only has
    to match `row_ids` in shape (it is the packing's input; the index does not depend on it).
    """
    row_ids = _check_row_ids(row_ids, lengths)
    if _use_native(backend):
        n_rows = int(row_ids.max()) + 1 if row_ids.size else 0
        return _packer.build_row_index(row_ids, n_rows)
    return build_row_index_ref(row_ids, lengths)
