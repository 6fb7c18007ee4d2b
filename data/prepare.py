"""Build a token cache: tokenize SFT / DPO files in parallel, pack them into rows, write the layout.

    python -m ie_engine.data.prepare {sft,dpo} INPUT... --tokenizer PATH --seq-len N --out DIR
        [--workers K] [--overlong truncate|drop] [--seed S]

An INPUT is a file, or a file with a cap or a share of its records (`tulu.jsonl:100000`,
`tulu.jsonl:0.3`), drawn with the seed (data/mixture.py: the syntax, the ':' rule, the draw).

Steps: read records in input order (data/formats.py; of an input with a take, the drawn ones)
-> encode chunks of them in a process pool (data/encode.py; each worker loads the tokenizer
once; results are consumed in submission order, so the cache is byte-identical for any worker
count) -> pack the examples into rows (data/pack.py: best fit decreasing, then a repair of the
emptiest rows) -> write the layout that data/cache.py owns (FORMAT_VERSION), plus DIR/stats.json.

Reuse: DIR/meta.json holds a fingerprint of everything the bytes depend on: each input's
absolute path, size, mtime_ns and take ("all", a cap or a share: a different mix never reuses
a cache; size and mtime rather than a content hash, since hashing gigabytes would cost as much
as a rebuild, and tools that rewrite a file change its mtime), the tokenizer's sha256 (a
tokenizer.json with the config files beside it that decide BOS/EOS:
data.tokenizer.tokenizer_sha256), the sha256 of the sources that decide the bytes
(data/formats.py, template.py, tokenizer.py, encode.py, pack.py, stats.py, mixture.py and this
file), kind, seq_len, overlong, seed and FORMAT_VERSION. The worker count is not in it: it does
not change the output. Same fingerprint -> the cache is reused (and says so on stderr); anything
else -> rebuilt. The build happens in DIR.tmp-XXXX and is renamed into place at the end, so a
crash never leaves a DIR that looks complete (meta.json is written last, inside the temporary
directory).

Overlong examples follow `overlong` (data/encode.py: truncate or drop; a DPO pair is one unit).

`seed` draws the records of inputs with a take, and breaks ties: documents are shuffled with it
before packing, so which of several equally long examples share a row is random instead of
following input order. Rows still hold their documents in increasing example index.

stats.json (data/stats.py) counts records, tokens and target tokens per source dataset and per
input (with the input's take and the records the file holds).

Bad input (a missing file, a tokenizer that is not one, a malformed record) raises
ie_engine.data.formats.DataError naming the file (and line and field); the command line prints that message
alone and exits with status 2.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ie_engine.data.cache import FORMAT_VERSION
from ie_engine.data.encode import TRUNCATED, encode_records
from ie_engine.data.formats import DataError, count_records, read_dpo, read_sft
from ie_engine.data.mixture import Source, as_sources, resolve
from ie_engine.data.pack import build_row_index, pack_documents
from ie_engine.data.stats import build_stats
from ie_engine.data.tokenizer import Tokenizer, WordCacheTokenizer, tokenizer_sha256

CHUNK = 256  # records per pool task: large enough to amortise pickling, small for load balance

# the data/ sources that decide a cache's bytes: an edit to any of them rebuilds caches
_SOURCES = ("formats.py", "template.py", "tokenizer.py", "encode.py", "pack.py", "prepare.py", "stats.py",
            "mixture.py")


# ----------------------------------------------------------------------------- workers

_TOK: Tokenizer | None = None  # each worker process loads the tokenizer once


def _init_worker(tokenizer_path: str) -> None:
    global _TOK
    _TOK = WordCacheTokenizer(tokenizer_path)


def _encode_chunk(job: tuple) -> tuple:
    """One pool task: (kind, seq_len, overlong, dtype, items) -> ie_engine.data.encode.encode_records."""
    return encode_records(_TOK, *job)


# ----------------------------------------------------------------------------- fingerprint

def fingerprint(kind: str, inputs: list[str | Source], tokenizer_path: str, seq_len: int, overlong: str,
                seed: int) -> dict:
    """Everything the cache bytes depend on (see the module docstring); inputs as prepare() takes them."""
    here = Path(__file__).parent
    code = hashlib.sha256(b"".join((here / s).read_bytes() for s in _SOURCES)).hexdigest()
    files = []
    for src in as_sources(inputs):
        st = os.stat(src.path)
        files.append({"path": os.path.abspath(src.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                      "take": src.take})
    return {"format": FORMAT_VERSION, "kind": kind, "seq_len": int(seq_len), "overlong": overlong,
            "seed": int(seed), "inputs": files, "tokenizer_sha256": tokenizer_sha256(tokenizer_path),
            "code_sha256": code}


def _existing_fingerprint(out_dir: str) -> dict | None:
    try:
        with open(os.path.join(out_dir, "meta.json")) as f:
            return json.load(f).get("fingerprint")
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- reading

def _records(kind: str, sources: list[Source], picks: list[np.ndarray | None]
             ) -> Iterator[tuple[int, str, object]]:
    """(input index, dataset, payload) per record in input order, of each input only the drawn
    positions (picks[i], sorted; None = all); payload = messages or (chosen, rejected). Every
    record is read and checked, drawn or not."""
    for i, (src, pick) in enumerate(zip(sources, picks)):
        recs = read_sft(src.path, training=True) if kind == "sft" else read_dpo(src.path)
        nxt = 0  # index into pick of the next position to keep
        for position, rec in enumerate(recs):
            if pick is not None:
                if nxt == len(pick) or pick[nxt] != position:
                    continue
                nxt += 1
            payload = rec["messages"] if kind == "sft" else (rec["chosen"], rec["rejected"])
            yield i, rec["dataset"], payload


def _chunks(it: Iterable, n: int) -> Iterator[list]:
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def _gather_segments(src: np.ndarray, starts: np.ndarray, lens: np.ndarray, out: np.ndarray,
                     block: int = 1 << 23) -> None:
    """out = concatenation of src[starts[k]:starts[k]+lens[k]] over k, vectorised in blocks."""
    ends = np.cumsum(lens)                                  # (K,) end offset in out
    k0, o0 = 0, 0
    while k0 < len(lens):
        k1 = max(int(np.searchsorted(ends, o0 + block, side="right")), k0 + 1)
        seg_len = lens[k0:k1]
        o1 = int(ends[k1 - 1])
        # index of out[o] in src: starts[k] + (o - segment k's start in out)
        idx = np.repeat(starts[k0:k1] - (ends[k0:k1] - seg_len), seg_len) + np.arange(o0, o1)
        out[o0:o1] = src[idx]
        k0, o0 = k1, o1


# ----------------------------------------------------------------------------- prepare

def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _log(msg: str) -> None:
    print(f"[ie_engine.data.prepare] {msg}", file=sys.stderr, flush=True)


def prepare(kind: str, inputs: list[str] | str, tokenizer_path: str, seq_len: int, out_dir: str,
            overlong: str = "truncate", workers: int | None = None, seed: int = 0,
            progress: bool = True) -> str:
    """Build (or reuse) the token cache of `inputs` in out_dir; returns out_dir.

    kind: "sft" (conversations) or "dpo" (preference pairs). workers: processes for tokenizing
    (default: every core this process may use; 1 runs in-process). The output does not depend
    on `workers`. See the module docstring for reuse, overlong handling and `seed`.
    """
    if kind not in ("sft", "dpo"):
        raise DataError(f"kind must be 'sft' or 'dpo', got {kind!r}")
    if overlong not in ("truncate", "drop"):
        raise DataError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
    if int(seq_len) != seq_len or seq_len < 2:
        raise DataError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike, Source)) else list(inputs)
    if not inputs:
        raise DataError("no input files")
    sources = as_sources(inputs)
    for src in sources:
        if not os.path.isfile(src.path):
            raise DataError(f"input file not found: {src.path}")
    if not os.path.isfile(tokenizer_path):
        raise DataError(f"tokenizer file not found: {tokenizer_path}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    fp = fingerprint(kind, sources, tokenizer_path, seq_len, overlong, seed)
    if _existing_fingerprint(out_dir) == fp:
        _log(f"reusing cache {out_dir} (inputs, tokenizer and settings unchanged)")
        return out_dir
    if os.path.lexists(out_dir) and not (os.path.isdir(out_dir) and (
            not os.listdir(out_dir) or os.path.isfile(os.path.join(out_dir, "meta.json")))):
        # a stale cache is replaced (deleted); anything else at that path is not ours to delete
        raise FileExistsError(f"{out_dir} exists and is not a token cache (no meta.json); "
                              "refusing to replace it: pick another --out")
    workers = _default_workers() if workers is None else max(1, int(workers))
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        t0 = time.perf_counter()
        stats = _build(kind, sources, tokenizer_path, int(seq_len), overlong, seed, workers,
                       progress, tmp, fp)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(f"wrote {out_dir}: {stats['examples']} examples, {stats['tokens']} tokens, "
         f"{stats['rows']} rows of {seq_len}, pad {100 * stats['pad_fraction']:.2f}%, "
         f"truncated {stats['truncated']}, dropped {stats['dropped']} "
         f"({time.perf_counter() - t0:.1f} s, {workers} workers)")
    return out_dir


def _replace_dir(tmp: str, out_dir: str) -> None:
    """Rename tmp to out_dir; an existing (stale) out_dir is moved aside first, then deleted."""
    old = None
    if os.path.lexists(out_dir):
        old = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".old-",
                               dir=os.path.dirname(out_dir))
        os.rename(out_dir, os.path.join(old, "cache"))
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _encode_all(kind, sources, picks, tokenizer_path, seq_len, overlong, dtype, workers, progress):
    """Run the workers over every (drawn) record; returns concatenated per-chunk outputs, each
    record's dataset index and input index, and the dataset names."""
    from tqdm import tqdm

    datasets: dict[str, int] = {}
    rec_dataset: list[np.ndarray] = []
    rec_input: list[np.ndarray] = []
    outs: list[tuple] = []
    total = None
    if progress:
        sizes = [len(p) if p is not None else count_records(s.path) for s, p in zip(sources, picks)]
        total = None if None in sizes else sum(sizes)
    bar = tqdm(total=total, unit=" ex", disable=not progress,
               desc=f"tokenizing {kind}", file=sys.stderr, dynamic_ncols=True)

    def jobs():
        for chunk in _chunks(_records(kind, sources, picks), CHUNK):
            rec_dataset.append(np.array([datasets.setdefault(d, len(datasets)) for _, d, _ in chunk],
                                        dtype=np.int64))
            rec_input.append(np.array([i for i, _, _ in chunk], dtype=np.int64))
            yield (kind, seq_len, overlong, dtype, [x for _, _, x in chunk])

    def take(out):
        outs.append(out)
        bar.update(len(out[4]))

    if workers == 1:
        _init_worker(tokenizer_path)
        for job in jobs():
            take(_encode_chunk(job))
    else:
        # fork where there is one, as torch's DataLoader does: workers start in milliseconds
        # and need no importable __main__ (spawn re-runs the caller's script, and respawns
        # forever if it can't, e.g. from stdin). They only run sentencepiece and NumPy, so the
        # parent's other threads (torch, NCCL) are never touched in the child.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_path,)) as pool:
            pending: collections.deque = collections.deque()
            for job in jobs():  # bounded window: memory stays O(workers * CHUNK) records
                pending.append(pool.apply_async(_encode_chunk, (job,)))
                if len(pending) >= 3 * workers:
                    take(pending.popleft().get())
            while pending:
                take(pending.popleft().get())
    bar.close()
    names = list(datasets)
    empty = (np.zeros(0, dtype), np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, np.int64),
             np.zeros(0, np.int8), np.zeros(0, np.int64))
    cols = [np.concatenate([o[k] for o in outs] + [empty[k]]) for k in range(6)]
    rec_dataset = np.concatenate(rec_dataset + [np.zeros(0, np.int64)])
    rec_input = np.concatenate(rec_input + [np.zeros(0, np.int64)])
    return (*cols, rec_dataset, rec_input, names)


def _build(kind, sources, tokenizer_path, seq_len, overlong, seed, workers, progress, tmp, fp) -> dict:
    t0 = time.perf_counter()
    tok = Tokenizer(tokenizer_path)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 65536 else np.int32)
    mix = resolve(sources, seed)                                      # per input: (pick, record count)
    ids, mask, doc_lens, doc_tgt, status, full_len, rec_dataset, rec_input, names = _encode_all(
        kind, sources, [pick for pick, _ in mix], tokenizer_path, seq_len, overlong, dtype, workers, progress)
    t_encode = time.perf_counter() - t0

    per_ex = 2 if kind == "dpo" else 1
    ex_dataset = rec_dataset[status <= TRUNCATED]                     # (E,) kept examples
    E = len(ex_dataset)
    ex_len = doc_lens.reshape(E, per_ex).sum(1)                       # (E,) tokens per packing unit
    ex_tgt = doc_tgt.reshape(E, per_ex).sum(1)                        # (E,) target tokens

    # pack: seed shuffles the order the packer sees, i.e. only how length ties are broken
    perm = np.random.default_rng(seed).permutation(E)
    row_ids = np.empty(E, dtype=np.int64)
    row_ids[perm] = pack_documents(ex_len[perm], seq_len)
    ex_row_offsets, ex_order = build_row_index(row_ids, ex_len)       # (R+1,), (E,)
    R = len(ex_row_offsets) - 1

    # layout: examples row by row (increasing index within a row), an example's documents consecutive
    doc_order = (ex_order[:, None] * per_ex + np.arange(per_ex)).reshape(-1)  # (D,)
    lay_len = doc_lens[doc_order]                                     # (D,)
    src_start = (np.cumsum(doc_lens) - doc_lens)[doc_order]           # (D,) offset in ids
    N = int(doc_lens.sum())
    if N:
        tokens = np.memmap(os.path.join(tmp, "tokens.bin"), dtype=dtype, mode="w+", shape=(N,))
        _gather_segments(ids, src_start, lay_len, tokens)
        tokens.flush()
        del tokens, ids
        lay_mask = np.empty(N, dtype=bool)
        _gather_segments(mask, src_start, lay_len, lay_mask)
        np.packbits(lay_mask, bitorder="little").tofile(os.path.join(tmp, "targets.bin"))
        del lay_mask, mask
    else:
        open(os.path.join(tmp, "tokens.bin"), "wb").close()
        open(os.path.join(tmp, "targets.bin"), "wb").close()
    row_offsets = np.zeros(R + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_ids, weights=ex_len, minlength=R).astype(np.int64),
              out=row_offsets[1:])
    np.save(os.path.join(tmp, "row_offsets.npy"), row_offsets)
    np.save(os.path.join(tmp, "row_docs.npy"), ex_row_offsets * per_ex)
    np.save(os.path.join(tmp, "doc_lengths.npy"), lay_len.astype(np.int32))
    np.save(os.path.join(tmp, "doc_example.npy"), np.repeat(ex_order, per_ex).astype(np.int64))
    np.save(os.path.join(tmp, "example_record.npy"), np.flatnonzero(status <= TRUNCATED))
    np.save(os.path.join(tmp, "doc_dataset.npy"),
            np.repeat(ex_dataset[ex_order], per_ex).astype(np.int32))

    available = [n if n is not None else int((rec_input == i).sum()) for i, (_, n) in enumerate(mix)]
    stats = build_stats(kind, seq_len, overlong, seed, tok, fp, names, status, full_len, rec_dataset,
                        ex_len, ex_tgt, R, rec_input, available)
    _write_json(os.path.join(tmp, "stats.json"), stats)
    meta = {"format": FORMAT_VERSION, "kind": kind, "seq_len": seq_len,
            "tokenizer": os.path.abspath(tokenizer_path),
            "token_dtype": dtype.name, "pad_id": tok.pad_id, "bos_id": tok.bos_id,
            "eos_id": tok.eos_id, "vocab_size": tok.vocab_size, "datasets": names,
            "num_examples": E, "num_docs": int(len(doc_lens)), "num_rows": R, "num_tokens": N,
            "fingerprint": fp,
            "build": {"workers": workers, "encode_s": round(t_encode, 3),
                      "total_s": round(time.perf_counter() - t0, 3), "unix_time": time.time()}}
    _write_json(os.path.join(tmp, "meta.json"), meta)  # last: its presence marks completion
    return stats


def _write_json(path: str, obj: dict) -> None:
    """Inside the build directory: the directory's rename is what makes the cache appear."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ie_engine.data.prepare", description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=("sft", "dpo"))
    ap.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="JSONL / JSON files, read in order; FILE:100000 caps a file at that many records "
                         "and FILE:0.3 takes 30%% of them, drawn with --seed")
    ap.add_argument("--tokenizer", required=True, help="sentencepiece tokenizer.model or tokenizer.json")
    ap.add_argument("--seq-len", type=int, required=True, help="tokens per packed row")
    ap.add_argument("--out", required=True, help="cache directory to write")
    ap.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    ap.add_argument("--overlong", choices=("truncate", "drop"), default="truncate")
    ap.add_argument("--seed", type=int, default=0,
                    help="the draw of inputs with a cap or share, and the tie-breaking shuffle before packing")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)  # bad arguments: argparse prints usage and exits with 2
    try:
        out = prepare(a.kind, a.inputs, a.tokenizer, a.seq_len, a.out, overlong=a.overlong,
                      workers=a.workers, seed=a.seed, progress=not a.no_progress)
    except (DataError, OSError) as e:  # the message names the file (line, field): no traceback
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    with open(os.path.join(out, "stats.json")) as f:
        print(f.read(), end="")


if __name__ == "__main__":
    main()
