"""The token cache: its layout and version (FORMAT_VERSION), and the reader that builds batches from it.

The layout is defined here only: data/prepare.py writes it, stamps meta.json with FORMAT_VERSION
and puts it in the reuse fingerprint; a change to the layout bumps it, and `TokenCache` refuses
a cache of another version (ie_engine.data.formats.DataError: re-run `python -m ie_engine.data.prepare`). torch is
imported only where a batch is built, so the writer does not pay for it.

Layout of DIR (D documents, R rows, N real tokens; documents are laid out row by row, so a row is
one contiguous slice of the token store and a batch needs no per-document gather):

    meta.json        kind, seq_len, tokenizer (absolute path), token dtype, pad/bos/eos ids,
                     vocab_size, dataset names, counts, fingerprint, build (workers, seconds)
    stats.json       human-facing counts (see prepare.py)
    tokens.bin       (N,) uint16 if vocab_size <= 65536 else int32: every document's ids
    targets.bin      (ceil(N/8),) uint8: np.packbits(target_mask, bitorder="little") of the same
    row_offsets.npy  (R+1,) int64: row r is tokens[row_offsets[r]:row_offsets[r+1]]
    row_docs.npy     (R+1,) int64: row r holds documents row_docs[r]..row_docs[r+1]-1
    doc_lengths.npy  (D,)   int32: tokens per document, in layout order
    doc_example.npy  (D,)   int64: the example each document belongs to (SFT: kept-example index,
                            DPO: kept-pair index, both numbered in input order)
    doc_dataset.npy  (D,)   int32: index into meta["datasets"]
    example_record.npy (E,) int64: kept example -> record number over all inputs, in input order
                            (to trace a document back to its file and line)

Within a row, documents are in increasing example index. DPO: documents 2k and 2k+1 of the layout
are one pair's chosen and rejected sequences (a pair is packed as one unit), so a row always
holds whole pairs and the batch's documents 2p / 2p+1 are pair p's chosen / rejected.

Batch contract (B rows, T = seq_len; everything int64, see data_api):
    input_ids (B, T)  pad positions hold pad_id
    labels    (B, T)  pre-shifted: input_ids[b, t+1] if t+1 is in t's document and is a target,
                      else -100 (so a document's last token and every pad token get -100)
    positions (B, T)  restart at 0 at each document's first token; the pad tail counts 0..k
    doc_ids   (B, T)  0..S-1 in row-major order of first appearance, unique in the batch; pad -1
    num_docs  int S
    pair_index (P,)   DPO only: kept-pair index of batch pair p (documents 2p, 2p+1)
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np

from ie_engine.data.formats import DataError

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
IGNORE_INDEX = -100


class TokenCache:
    """Read-only view of one prepared cache directory; `batch(rows)` builds a training batch."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        with open(os.path.join(self.path, "meta.json")) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(f"{self.path}: cache format {meta.get('format')!r}, this code reads "
                             f"{FORMAT_VERSION}; re-run `python -m ie_engine.data.prepare`")
        self.meta = meta
        self.kind: str = meta["kind"]
        self.seq_len: int = int(meta["seq_len"])
        self.pad_id: int = int(meta["pad_id"])
        self.vocab_size: int = int(meta["vocab_size"])
        self.datasets: list[str] = list(meta["datasets"])
        n_tok = int(meta["num_tokens"])
        # np.memmap refuses empty files; an empty cache is legal (every example dropped)
        self.tokens = (np.memmap(self._file("tokens.bin"), dtype=meta["token_dtype"], mode="r",
                                 shape=(n_tok,)) if n_tok else np.zeros(0, meta["token_dtype"]))
        self.targets = (np.memmap(self._file("targets.bin"), dtype=np.uint8, mode="r",
                                  shape=((n_tok + 7) // 8,)) if n_tok else np.zeros(0, np.uint8))
        self.row_offsets = np.load(self._file("row_offsets.npy"))       # (R+1,)
        self.row_docs = np.load(self._file("row_docs.npy"))             # (R+1,)
        self.doc_lengths = np.load(self._file("doc_lengths.npy"))       # (D,)
        self.doc_example = np.load(self._file("doc_example.npy"))       # (D,)
        self.doc_dataset = np.load(self._file("doc_dataset.npy"))       # (D,)
        self.example_record = np.load(self._file("example_record.npy")) # (E,)
        self.doc_offsets = np.zeros(len(self.doc_lengths) + 1, dtype=np.int64)  # (D+1,)
        np.cumsum(self.doc_lengths, out=self.doc_offsets[1:])
        self.row_tokens: np.ndarray = np.diff(self.row_offsets)         # (R,) real tokens per row
        self.num_rows: int = len(self.row_tokens)
        self.num_docs: int = len(self.doc_lengths)
        self.num_examples: int = int(meta["num_examples"])
        self.num_pairs: int | None = self.num_examples if self.kind == "dpo" else None
        self._example_doc: np.ndarray | None = None

    # DataLoader workers get a cache by pickling: reopen the files, never copy the memory maps
    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def stats(self) -> dict:
        with open(self._file("stats.json")) as f:
            return json.load(f)

    def _target_slice(self, start: int, n: int) -> np.ndarray:
        """target_mask[start:start+n] as bool, unpacked from the bit store."""
        lo, hi = start >> 3, (start + n + 7) >> 3
        bits = np.unpackbits(self.targets[lo:hi], bitorder="little")
        return bits[start - (lo << 3):start - (lo << 3) + n].view(bool)

    def document(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32, target_mask bool) of layout document d."""
        s, n = int(self.doc_offsets[d]), int(self.doc_lengths[d])
        return self.tokens[s:s + n].astype(np.int32), self._target_slice(s, n)

    def example(self, i: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Kept example i's documents as [(ids, target_mask)]: one for SFT, [chosen, rejected] for DPO."""
        if self._example_doc is None:  # first layout document of each example
            first = np.ones(self.num_docs, dtype=bool)
            first[1:] = self.doc_example[1:] != self.doc_example[:-1]
            self._example_doc = np.empty(self.num_examples, dtype=np.int64)
            self._example_doc[self.doc_example[first]] = np.flatnonzero(first)
        d = int(self._example_doc[i])
        return [self.document(d + k) for k in range(2 if self.kind == "dpo" else 1)]

    def batch(self, row_indices) -> dict[str, torch.Tensor | int]:
        """The batch dict of these rows (see the module docstring); O(B*T) NumPy, no token loops."""
        import torch

        rows = np.asarray(row_indices, dtype=np.int64).reshape(-1)       # (B,)
        B, T = len(rows), self.seq_len
        starts = self.row_offsets[rows]                                 # (B,)
        n = self.row_offsets[rows + 1] - starts                         # (B,) real tokens per row
        tok = np.concatenate([self.tokens[s:s + k] for s, k in zip(starts.tolist(), n.tolist())]
                             + [np.zeros(0, self.tokens.dtype)]).astype(np.int64)  # (N,)
        tgt = np.concatenate([self._target_slice(s, k) for s, k in zip(starts.tolist(), n.tolist())]
                             + [np.zeros(0, bool)])                     # (N,)
        d0, d1 = self.row_docs[rows].tolist(), self.row_docs[rows + 1].tolist()
        doc_len = np.concatenate([self.doc_lengths[a:b] for a, b in zip(d0, d1)]
                                 + [np.zeros(0, self.doc_lengths.dtype)]).astype(np.int64)  # (S,)
        S, N = len(doc_len), len(tok)

        doc_flat = np.repeat(np.arange(S, dtype=np.int64), doc_len)     # (N,) batch doc id
        doc_start = np.cumsum(doc_len) - doc_len                        # (S,) flat offset of doc
        pos_flat = np.arange(N, dtype=np.int64) - np.repeat(doc_start, doc_len)  # (N,)
        lab_flat = np.full(N, IGNORE_INDEX, dtype=np.int64)             # (N,)
        # token t+1 is t's label when it is a target of the same document; rows are concatenated
        # here, but a row boundary is always a document boundary, so the same test covers it
        keep = (doc_flat[1:] == doc_flat[:-1]) & tgt[1:]
        lab_flat[:-1][keep] = tok[1:][keep]

        col = np.arange(T, dtype=np.int64)[None, :]                     # (1, T)
        valid = col < n[:, None]                                        # (B, T) real tokens
        input_ids = np.full((B, T), self.pad_id, dtype=np.int64)
        input_ids[valid] = tok  # boolean assignment fills row-major, the order tok is in
        labels = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
        labels[valid] = lab_flat
        positions = col - n[:, None]                                    # pad tail: 0..k
        positions[valid] = pos_flat
        doc_ids = np.full((B, T), -1, dtype=np.int64)
        doc_ids[valid] = doc_flat
        out = {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "positions": torch.from_numpy(positions),
            "doc_ids": torch.from_numpy(doc_ids),
            "num_docs": S,
        }
        if self.kind == "dpo":
            ex = np.concatenate([self.doc_example[a:b] for a, b in zip(d0, d1)]
                                + [np.zeros(0, np.int64)])              # (S,) = (2P,)
            out["pair_index"] = torch.from_numpy(np.ascontiguousarray(ex[0::2], dtype=np.int64))
        return out
