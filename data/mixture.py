"""Dataset mixing: an input of a token cache (an entry of data.train_files / data.eval_files, or an
INPUT of `python -m ie_engine.data.prepare`) is a path with an optional share or cap after its
last ':', the way open-instruct's dataset_mixer takes a fraction or a count per dataset:

    ie_instruct.jsonl             every record
    tulu_v2_mix.jsonl:100000      a cap: 100,000 records drawn at random (all, if the file has fewer)
    tulu_v2_mix.jsonl:0.3         a share: 30% of the records (rounded to the nearest), drawn at random

The ':' rule: the text after the last ':' is a take when it is a number (digits, optionally a
sign, a decimal point or an exponent); otherwise it belongs to the path, so `runs:v2/a.jsonl`
is a path. A whole number is a cap (>= 1), a number with a '.' or an exponent a share in
(0, 1]: `:1` is one record, `:1.0` all of them. The rare file whose own name ends in
':<digits>' is written with an explicit `:1.0` after it (`odd:7.jsonl` needs nothing: `7.jsonl`
is no number). A share above 1 (upsampling) is refused: list the file twice instead.

The draw is a uniform sample without replacement of record positions, from
numpy.random.default_rng((seed, i)) with i the entry's position in the list (a file listed
twice gets two independent draws), kept in file order. Its inputs are the file's record count,
the take and the seed, so the draw is the same on every machine and for every worker count;
data/prepare.py puts the take and the seed in the cache fingerprint and the per-input counts in
stats.json. Every record of a drawn file is still read and checked; only the drawn ones are
tokenized.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from ie_engine.data.formats import DataError, count_records

_WHOLE = re.compile(r"[+-]?\d+")
_REAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+|\.\d+[eE][+-]?\d+)")


@dataclass(frozen=True)
class Source:
    """One input: a path and what to take of it (cap: a record count; share: a fraction; neither: all)."""
    path: str
    cap: int | None = None
    share: float | None = None

    @property
    def take(self) -> str:
        """The take as written after the ':' ("all" when there is none): the fingerprint's and stats.json's name for it."""
        if self.cap is not None:
            return str(self.cap)
        return "all" if self.share is None else repr(self.share)

    @property
    def draws(self) -> bool:
        return self.cap is not None or self.share is not None


def parse_source(entry: str) -> Source:
    """'path', 'path:CAP' or 'path:SHARE' -> Source; a bad take raises ValueError saying why
    (the caller adds the config key or the argument's name)."""
    path, sep, take = entry.rpartition(":")
    if not sep or not (_WHOLE.fullmatch(take) or _REAL.fullmatch(take) or take == ""):
        return Source(entry)  # no take: ':' (if any) is part of the path
    if take == "":
        raise ValueError(f"{entry!r} ends in ':' with nothing after it; write path:CAP (e.g. :100000) or "
                         f"path:SHARE (e.g. :0.3), or the path alone for every record")
    if not path:
        raise ValueError(f"{entry!r} has a take but no file before the ':'")
    if _WHOLE.fullmatch(take):
        cap = int(take)
        if cap < 1:
            raise ValueError(f"{entry!r}: a cap is a number of records >= 1, got {cap} "
                             "(leave the entry out to use none of the file)")
        return Source(path, cap=cap)
    share = float(take)
    if not 0.0 < share <= 1.0:
        raise ValueError(f"{entry!r}: a share must lie in (0, 1], got {take} (a cap is a whole number of "
                         "records such as :100000; to upsample, list the file twice)")
    return Source(path, share=share)


def draw(source: Source, n_records: int, seed: int, index: int) -> np.ndarray | None:
    """Sorted positions of the records to take from a file of n_records (None: all of them).
    index: the entry's position in the input list (see the module docstring)."""
    if not source.draws:
        return None
    k = min(source.cap, n_records) if source.cap is not None else int(source.share * n_records + 0.5)
    if k >= n_records:
        return np.arange(n_records, dtype=np.int64)
    rng = np.random.default_rng((int(seed), int(index)))
    return np.sort(rng.choice(n_records, size=k, replace=False)).astype(np.int64)


def resolve(sources: list[Source], seed: int) -> list[tuple[np.ndarray | None, int | None]]:
    """Per source: (draw(...), the file's record count); (None, None) for a source taken whole,
    whose count is only known once it has been read."""
    out = []
    for i, src in enumerate(sources):
        if src.draws:
            n = count_records(src.path)
            out.append((draw(src, n, seed, i), n))
        else:
            out.append((None, None))
    return out


def as_sources(inputs: list[str | Source]) -> list[Source]:
    """Inputs as Sources: a string is parsed for a take (data/mixture.py); a bad one is a DataError."""
    out = []
    for entry in inputs:
        if isinstance(entry, Source):
            out.append(entry)
            continue
        try:
            out.append(parse_source(os.fspath(entry)))
        except ValueError as e:
            raise DataError(f"input {e}") from None
    return out
