"""Benchmark: tokenize + pack 400k ADELIE-like conversations end to end with ie_engine.data.prepare.

    python -m ie_engine.bench.bench_prepare [--n 400000] [--seq-len 2048] [--workers K] [--vocab 32000]

The data is synthetic (no dataset is downloaded) but shaped like ADELIE's SFT mixture: zero-shot
closed IE (user instruction + text + options, short answer), few-shot multi-turn (4 demonstration
turns + query, 10 messages) and on-demand IE (system + user + markdown-table answer), with token
lengths mostly 100-800 and a tail up to ~2048 (printed: the measured length percentiles). Text
comes from a Zipfian "language" of random words, and the tokenizer is a 32k-piece BPE trained
on it with data/tokenizer.train_tokenizer (Llama-2's settings), so sentencepiece does the same
kind of work as with Llama-2's 32k model without needing that file. Data files and tokenizer are
generated once under --work (default /tmp/ie_engine_bench_prepare) and reused; the timed part is
one cold `prepare()` call (read JSONL, tokenize in the pool, pack, write the cache).

Reported: wall seconds, examples/s, tokens/s, pad fraction, rows, length percentiles, peak
resident memory of the main process and of a worker, the target
(<= 120 s for 400k on the 2-core machine), and the CPU seconds the main process and the pool
workers used: on a shared machine `core_share` (CPU used / (wall * cores)) says how much of the
cores the run actually had, and `tokens_per_cpu_s` is the load-independent figure. A second
table times encode_conversation on one core (CPU time) with plain sentencepiece and with
data.tokenizer.WordCacheTokenizer, checking they give the same ids. Appended to
bench/results/prepare.jsonl.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from ie_engine.data.files import open_atomic

LETTER_FREQ = {"e": 12.7, "t": 9.1, "a": 8.2, "o": 7.5, "i": 7.0, "n": 6.7, "s": 6.3, "h": 6.1,
               "r": 6.0, "d": 4.3, "l": 4.0, "c": 2.8, "u": 2.8, "m": 2.4, "w": 2.4, "f": 2.2,
               "g": 2.0, "y": 2.0, "p": 1.9, "b": 1.5, "v": 1.0, "k": 0.8, "j": 0.15, "x": 0.15,
               "q": 0.1, "z": 0.07}  # English letter frequencies, %
ENTITY_TYPES = ("person", "organization", "location", "event", "product", "art", "building",
                "miscellaneous", "disease", "chemical")
INSTRUCTIONS = (
    "Recognize entities from the following sentence and classify the entity type into the options.",
    "Extract the relation between the two marked entities. Options: <options>.",
    "Given the text below, identify every event trigger and its type from the options.",
    "For the given context, identify and classify the named entities into their categories.",
)
ONDEMAND_SYSTEM = ("You are a helpful assistant. Extract the requested information from the text "
                   "and present it as a concise markdown table.")


class TextSource:
    """Fast random text: Zipfian words of English-frequency letters, pre-joined into sentences.

    300k word types, Zipf exponent 1.05: a 32k BPE trained on it gives ~4.6 characters and ~1.3
    tokens per word, about what Llama-2's tokenizer gives on English, so sentencepiece does a
    realistic amount of work per token. Text is drawn from a pool of pre-built sentences, so
    generating 400k conversations is fast.
    """

    def __init__(self, seed: int = 0, n_types: int = 300_000, n_sentences: int = 100_000):
        rng = np.random.default_rng(seed)
        letters, freq = np.array(list(LETTER_FREQ)), np.array(list(LETTER_FREQ.values()))
        lens = 1 + rng.poisson(3.5, n_types)
        flat = rng.choice(letters, int(lens.sum()), p=freq / freq.sum())
        ends = np.cumsum(lens)
        words = np.array(list(dict.fromkeys("".join(flat[e - k:e]) for k, e in zip(lens, ends))))
        p = 1.0 / np.arange(1, len(words) + 1) ** 1.05
        sent_len = rng.integers(6, 28, n_sentences)
        flat = rng.choice(words, int(sent_len.sum()), p=p / p.sum())
        ends = np.cumsum(sent_len)
        self.sentences = [" ".join(flat[e - k:e]).capitalize() + "." for k, e in zip(sent_len, ends)]
        self.sent_words = sent_len.tolist()
        self.words = words[:2000].tolist()  # frequent words, for entity names and answers
        self.rnd = random.Random(seed)  # per-record draws: Python's scalar RNG is ~10x NumPy's

    def text(self, n_words: int) -> str:
        """About n_words words of sentences."""
        rnd, sents, sw = self.rnd, self.sentences, self.sent_words
        out, got = [], 0
        while got < n_words:
            i = rnd.randrange(len(sents))
            out.append(sents[i])
            got += sw[i]
        return " ".join(out)

    def answer(self, n_items: int) -> str:
        rnd = self.rnd
        items = [f"{' '.join(rnd.choices(self.words, k=rnd.randint(1, 3)))}: "
                 f"{rnd.choice(ENTITY_TYPES)}" for _ in range(n_items)]
        return "; ".join(items) if items else "NA"


def _words_for(rnd: random.Random, scale: float) -> int:
    # lognormal body (median ~190 words ~ 250 tokens) with a tail; ADELIE's are mostly 100-800
    return int(min(max(rnd.lognormvariate(math.log(190 * scale), 0.6), 40 * scale), 1500 * scale))


def synthetic_sft(n: int, seed: int = 0, scale: float = 1.0,
                  src: TextSource | None = None) -> Iterator[dict]:
    """n ADELIE-shaped SFT records {"dataset", "id", "messages"}; scale shrinks lengths for tests."""
    src = src or TextSource(seed)
    rnd = random.Random(seed + 1)
    for i in range(n):
        kind = rnd.choices((0, 1, 2), weights=(0.5, 0.35, 0.15))[0]
        words = _words_for(rnd, scale)
        options = ", ".join(ENTITY_TYPES[: rnd.randint(3, len(ENTITY_TYPES))])
        instr = rnd.choice(INSTRUCTIONS)
        if kind == 0:  # zero-shot closed IE
            msgs = [{"role": "user", "content": f"{instr}\nOptions: {options}\n\nText: "
                                                f"{src.text(words)}"},
                    {"role": "assistant", "content": src.answer(rnd.randint(0, 5))}]
            dataset = "zeroshot_ner"
        elif kind == 1:  # few-shot: 4 demonstrations + query, 10 messages
            per = max(words // 5, 8)
            msgs = [{"role": "user", "content": f"{instr}\nOptions: {options}\n\nText: "
                                                f"'{src.text(per)}'"}]
            for d in range(4):
                msgs.append({"role": "assistant",
                             "content": "[Answer]: " + src.answer(rnd.randint(1, 4))})
                msgs.append({"role": "user", "content": f"Text: '{src.text(per)}'"})
            msgs.append({"role": "assistant", "content": src.answer(rnd.randint(0, 4))})
            dataset = "fewshot_ner"
        else:  # on-demand IE: system + user + markdown table
            table = "| name | type | detail |\n|---|---|---|\n" + "\n".join(
                f"| {src.answer(1).replace(': ', ' | ')} | {src.text(4)} |"
                for _ in range(rnd.randint(2, 7)))
            msgs = [{"role": "system", "content": ONDEMAND_SYSTEM},
                    {"role": "user", "content": f"Extract a table of the key facts.\n\n"
                                                f"{src.text(words)}"},
                    {"role": "assistant", "content": "[Answer]: " + table}]
            dataset = "ondemand"
        yield {"dataset": dataset, "id": i, "messages": msgs}


def synthetic_dpo(n: int, seed: int = 0, scale: float = 1.0,
                  src: TextSource | None = None) -> Iterator[dict]:
    """n IEFeedback-shaped DPO records {"dataset", "id", "messages", "chosen", "rejected"}."""
    src = src or TextSource(seed)
    rnd = random.Random(seed + 2)
    for rec in synthetic_sft(n, seed, scale, src):
        prompt = rec["messages"][:-1]
        good = rec["messages"][-1]["content"]
        bad = (src.answer(rnd.randint(0, 7)) if rnd.random() < 0.7
               else src.text(rnd.randint(5, int(60 * scale) + 5)))
        yield {"dataset": rec["dataset"], "id": rec["id"], "messages": prompt,
               "chosen": [{"role": "assistant", "content": good}],
               "rejected": [{"role": "assistant", "content": bad}]}


def write_jsonl(records, path: str | os.PathLike) -> str:
    """Stream records to a JSONL file, atomically (a killed run leaves no half file to reuse)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_atomic(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def build_assets(work: str, n: int, vocab: int, seed: int = 0, files: int = 4) -> tuple[list[str], str]:
    """Synthetic JSONL files (n records split over `files`) + a trained tokenizer, cached in work."""
    from ie_engine.data.tokenizer import train_tokenizer

    work = Path(work)
    src = TextSource(seed)
    tok_path = work / f"bpe{vocab}_s{seed}.model"
    if not tok_path.exists():
        t0 = time.perf_counter()
        texts = (m["content"] for r in synthetic_sft(20000, seed + 100, 1.0, src) for m in r["messages"])
        train_tokenizer(texts, vocab, tok_path)
        print(f"# trained {tok_path} in {time.perf_counter() - t0:.1f} s")
    paths = []
    per = -(-n // files)
    for k in range(files):
        p = work / f"sft_n{n}_s{seed}_{k}.jsonl"
        if not p.exists():
            t0 = time.perf_counter()
            cnt = min(per, n - k * per)
            write_jsonl(synthetic_sft(cnt, seed * 1000 + k, 1.0, TextSource(seed)), p)
            print(f"# wrote {p} ({cnt} records) in {time.perf_counter() - t0:.1f} s")
        paths.append(str(p))
    return paths, str(tok_path)


def tokenizer_throughput(inputs: list[str], tok_path: str, n: int = 20000) -> list[dict]:
    """CPU-time tokens/s of encode_conversation, plain sentencepiece vs the word cache (one core).

    Measured with process_time so that other load on a shared machine does not count; the word
    cache is timed on the second half of the records (warm, as in a long run) and must give the
    same ids as plain sentencepiece.
    """
    from ie_engine.data.formats import read_sft
    from ie_engine.data.template import encode_conversation
    from ie_engine.data.tokenizer import Tokenizer, WordCacheTokenizer

    recs = []
    for p in inputs:
        for r in read_sft(p):
            recs.append(r["messages"])
            if len(recs) == n:
                break
        if len(recs) == n:
            break
    half = recs[n // 2:]
    rows = []
    cached = WordCacheTokenizer(tok_path)
    for m in recs[: n // 2]:
        encode_conversation(cached, m)  # warm-up: fill the memo
    for name, tok in (("sentencepiece", Tokenizer(tok_path)), ("word_cache", cached)):
        t0 = time.process_time()
        out = [encode_conversation(tok, m)[0] for m in half]
        cpu = time.process_time() - t0
        ntok = sum(len(x) for x in out)
        rows.append({"step": f"encode_conversation[{name}]", "conversations": len(half),
                     "tokens": ntok, "cpu_s": round(cpu, 2),
                     "tokens_per_cpu_s": round(ntok / cpu)})
        if name == "sentencepiece":
            want = out
        else:
            assert all(np.array_equal(x, y) for x, y in zip(out, want)), "word cache differs"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--work", default="/tmp/ie_engine_bench_prepare")
    ap.add_argument("--target-s", type=float, default=120.0)
    a = ap.parse_args()

    from ie_engine.bench.common import append_results
    from ie_engine.data.cache import TokenCache
    from ie_engine.data.prepare import _default_workers, prepare

    inputs, tok_path = build_assets(a.work, a.n, a.vocab)
    out = os.path.join(a.work, f"cache_n{a.n}")
    shutil.rmtree(out, ignore_errors=True)  # cold: the timed call must build, not reuse
    workers = a.workers or _default_workers()
    ru0 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    t0 = time.perf_counter()
    prepare("sft", inputs, tok_path, a.seq_len, out, workers=workers)
    wall = time.perf_counter() - t0
    ru1 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = [(b.ru_utime + b.ru_stime) - (a_.ru_utime + a_.ru_stime) for a_, b in zip(ru0, ru1)]
    cache = TokenCache(out)
    st = cache.stats()
    lens = np.diff(cache.doc_offsets)
    pct = {f"len_p{q}": int(np.percentile(lens, q)) for q in (10, 50, 90, 99)}
    cores = len(os.sched_getaffinity(0))
    row = {"step": "prepare_sft_end_to_end", "n": st["records"], "seq_len": a.seq_len,
           "vocab": cache.vocab_size, "workers": workers, "cores": cores,
           "load_avg_1m": round(os.getloadavg()[0], 2), "wall_s": round(wall, 2),
           "encode_s": cache.meta["build"]["encode_s"],
           # CPU the job got: main process (reading, packing, writing) and the pool workers;
           # (cpu_main_s + cpu_workers_s) / (wall_s * cores) is the share of the cores it had
           "cpu_main_s": round(cpu[0], 1), "cpu_workers_s": round(cpu[1], 1),
           "core_share": round((cpu[0] + cpu[1]) / (wall * cores), 3),
           # high-water resident memory (ru_maxrss, KiB): this process over its life, and the
           # largest pool worker
           "peak_rss_main_mb": round(ru1[0].ru_maxrss / 1024),
           "peak_rss_worker_mb": round(ru1[1].ru_maxrss / 1024),
           "examples_per_s": round(st["records"] / wall), "tokens": st["tokens"],
           "tokens_per_s": round(st["tokens"] / wall),
           "tokens_per_cpu_s": round(st["tokens"] / (cpu[0] + cpu[1])),
           "rows": st["rows"], "pad_fraction": round(st["pad_fraction"], 5),
           "truncated": st["truncated"], **pct,
           "target_s": a.target_s, "meets_target": wall <= a.target_s * a.n / 400_000}
    append_results("prepare", [row] + tokenizer_throughput(inputs, tok_path))


if __name__ == "__main__":
    main()
