"""Generation over files: ADELIE/IEInstruct prompts, sharded over ranks, resumable, one output
file per input. What the generate recipe runs and what evaluation and IEFeedback call in-process:

    prompts = read_prompts(files, tokenizer)            # checks every record, before any model
    paths = generate_files(cfg.generate, model, tokenizer, files, out_dir, world, seed=cfg.seed,
                           prompts=prompts)             # -> [out_dir / name of each input]

Prompts: a record is {"dataset" | "datasets", "id", "messages"} (data/formats.read_sft checks
it). Its prompt is every message but a final assistant one (the gold answer), rendered with the
training chat template through the "<|assistant|>\\n" that opens the answer: token for token
what training saw before that answer (encode_conversation of the prompt plus an empty answer,
minus its EOS: "\\n" is a hard token boundary, so the header's tokens do not depend on the answer).
A record without a final assistant message is all prompt. An id repeated within a file gets
"#2", "#3", ... in order, so (file, id, sample index) names each sample once.

Work and resume: every (record, sample index) not yet in out_dir/parts/ is dealt to the ranks
(longest prompts first, round-robin). Each rank appends finished samples to
out_dir/parts/rank-<r>.jsonl and flushes whenever the generator hands some back; a run that was
killed, rerun with the same settings (any number of ranks), skips what is there. Rank 0 reads
the parts (dropping a last line cut short by the kill) and tells every rank, so all agree on the
remaining work. Different sampling settings in the same out_dir are an error
(out_dir/parts/settings.json). At the end rank 0 writes out_dir/<input file name>: input order,
n lines per record, each the input record unchanged plus "output" (the generated assistant
text), "sample_index", "finish_reason" ("stop" / "length") and "num_tokens" (generated tokens,
EOS included), and out_dir/summary.json.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from ie_engine.engine import parallel
from ie_engine.engine.config import ConfigError
from ie_engine.engine.generate.generator import Completion, Request, generate


@dataclass
class Prompt:
    """One record's prompt."""
    file: str
    """The input file's name (the output file's name too)."""
    where: str
    """FILE:LINE, for messages about it."""
    dataset: str
    id: str
    """The record's id, unique within the file."""
    ids: list[int]
    """Prompt token ids, BOS first, ending with the assistant header."""


def _iter_records(path: str | Path, max_records: int = 0) -> Iterator[tuple[str, dict, dict, str]]:
    """(where, raw record, checked record, unique id) of a file, at most max_records (0 = all).
    A bad record raises ConfigError("FILE:LINE: field: problem")."""
    from ie_engine.data.formats import _records, read_sft

    seen: dict[str, int] = {}
    try:
        for (where, raw), rec in itertools.islice(zip(_records(path), read_sft(path)), max_records or None):
            seen[rec["id"]] = seen.get(rec["id"], 0) + 1
            uid = rec["id"] if seen[rec["id"]] == 1 else f"{rec['id']}#{seen[rec['id']]}"
            yield where, raw, rec, uid
    except ValueError as e:  # the reader's FILE:LINE: field: problem
        raise ConfigError(str(e)) from None


def prompt_messages(messages: list[dict], where: str) -> list[dict]:
    """The messages a prompt renders: all but a final assistant message (the gold answer)."""
    prompt = messages[:-1] if messages[-1]["role"] == "assistant" else messages
    if not any(m["role"] == "user" for m in prompt):
        raise ConfigError(f"{where}: messages: no user turn before the answer, nothing to prompt with")
    return prompt


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt ids: the chat template of `messages` + the assistant header (see module docstring)."""
    from ie_engine.data.template import encode_conversation
    ids, _ = encode_conversation(tokenizer, list(messages) + [{"role": "assistant", "content": ""}])
    assert ids[-1] == tokenizer.eos_id, "an empty answer renders as header + EOS"
    return ids[:-1].tolist()


def read_prompts(files: list[str | Path], tokenizer, max_records: int = 0,
                 max_seq_len: int | None = None) -> list[Prompt]:
    """Every record's prompt, checked (ConfigError naming FILE:LINE): empty or malformed
    messages, no user turn, a prompt that leaves no room under max_seq_len."""
    prompts = []
    for path in files:
        if not Path(path).is_file():
            raise ConfigError(f"data.files: {path} does not exist")
        for where, _, rec, uid in _iter_records(path, max_records):
            ids = encode_prompt(tokenizer, prompt_messages(rec["messages"], where))
            if max_seq_len is not None and len(ids) >= max_seq_len:
                raise ConfigError(f"{where}: the prompt is {len(ids)} tokens, no room to answer under the "
                                  f"model's max_seq_len {max_seq_len}")
            prompts.append(Prompt(Path(path).name, where, rec["dataset"], uid, ids))
    return prompts


# ---------------------------------------------------------------------------------- parts

def _fingerprint(settings, seed: int) -> dict:
    keys = ("n", "temperature", "top_p", "top_k", "max_new_tokens", "stop", "backend")
    return {"seed": seed, **{k: getattr(settings, k) for k in keys}}


def _read_parts(parts: Path, repair: bool) -> Iterator[dict]:
    """The finished samples in parts/rank-*.jsonl. repair: cut a last line that a killed run
    left unfinished, so that appending to the file stays valid JSONL."""
    for path in sorted(parts.glob("rank-*.jsonl")):
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if repair and end < len(data):
            with open(path, "r+b") as f:
                f.truncate(end)
        for line in data[:end].splitlines():
            if line.strip():
                yield json.loads(line)


def _prepare_parts(parts: Path, settings, seed: int) -> set[tuple[str, str, int]]:
    """Rank 0: check the settings of earlier parts, repair them, and list what is done."""
    parts.mkdir(parents=True, exist_ok=True)
    fingerprint, saved = _fingerprint(settings, seed), parts / "settings.json"
    if saved.exists():
        before = json.loads(saved.read_text())
        if before != fingerprint:
            changed = sorted(k for k in fingerprint if before.get(k) != fingerprint[k])
            raise ConfigError(f"{parts.parent} holds partial outputs made with other settings ({changed}: "
                              f"{[before.get(k) for k in changed]}); use another output_dir or delete {parts}")
    else:
        saved.write_text(json.dumps(fingerprint, indent=1))
    return {(d["file"], d["id"], d["sample_index"]) for d in _read_parts(parts, repair=True)}


# ---------------------------------------------------------------------------------- run

def generate_files(settings, model, tokenizer, files: list[str | Path], out_dir: str | Path,
                   world: parallel.World, *, seed: int = 0, max_records: int = 0,
                   prompts: list[Prompt] | None = None,
                   on_write: Callable[[list[dict]], None] | None = None) -> list[Path]:
    """Generate settings.n samples for every record of `files`; returns out_dir / <name> per
    input (on every rank; rank 0 writes them). Every rank of `world` must call it.

    settings: a GenerateSection (engine/run_config.py).
    model: the engine backend's Transformer, a plain module on this rank's device (each rank
      holds a full copy; see ie_engine.engine.generate.generator.build_generation_model); for settings.backend
      "vllm", the Hugging Face directory to serve (str or Path).
    tokenizer: data.tokenizer.Tokenizer (template, EOS, decoding).
    prompts: read_prompts(files, tokenizer, max_records) when the caller already has them
      (the recipe checks the input before building the model); read here otherwise.
    on_write: called with the lines each time some are appended to this rank's part file.
    Resumes from out_dir/parts/ (module docstring); prints a summary on rank 0."""
    out_dir, t0 = Path(out_dir), time.perf_counter()
    parts = out_dir / "parts"
    if prompts is None:
        max_seq_len = getattr(getattr(model, "cfg", None), "max_seq_len", None)
        prompts = read_prompts(files, tokenizer, max_records, max_seq_len)
    done = _prepare_parts(parts, settings, seed) if world.rank == 0 else None
    done = parallel.broadcast_object(done)
    work = [(p, [s for s in range(settings.n) if (p.file, p.id, s) not in done]) for p in prompts]
    work = sorted((w for w in work if w[1]), key=lambda w: -len(w[0].ids))[world.rank::world.world_size]
    requests = [Request(p.ids, samples, (p.dataset, p.id), tag=p) for p, samples in work]
    if settings.backend == "vllm":
        from ie_engine.engine.generate.vllm_backend import generate_vllm
        batches = generate_vllm(model, requests, settings, tokenizer, seed=seed)
    else:
        batches = generate(model, requests, settings, tokenizer, seed=seed)
    counts = _write_parts(batches, parts / f"rank-{world.rank:05d}.jsonl", sum(len(s) for _, s in work),
                          world.rank == 0, on_write)
    totals = parallel.all_reduce_sum(torch.tensor([len(work), *counts], dtype=torch.float64))
    parallel.barrier()
    paths = [out_dir / Path(f).name for f in files]
    if world.rank == 0:
        _merge(files, paths, parts, settings.n, max_records)
        wall = time.perf_counter() - t0
        summary = {"prompts": len(prompts), "prompts_generated": int(totals[0]), "samples": int(totals[1]),
                   "generated_tokens": int(totals[2]), "wall_s": round(wall, 2),
                   "tokens_per_s": round(float(totals[2]) / wall, 1), "ranks": world.world_size,
                   "outputs": [str(p) for p in paths]}
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print("generate: " + "  ".join(f"{k} {v}" for k, v in summary.items() if k != "outputs"), flush=True)
    parallel.barrier()
    return paths


def _write_parts(batches: Iterator[list[Completion]], path: Path, total: int, bar: bool,
                 on_write) -> tuple[int, int]:
    """Append each batch of completions to this rank's part file (flushed per batch);
    a progress bar with tokens/s on rank 0. -> (samples, generated tokens)."""
    from tqdm import tqdm
    progress = tqdm(total=total, desc="generate", unit="sample", dynamic_ncols=True,
                    disable=not bar or os.environ.get("ENGINE_NO_BAR") == "1")
    samples = tokens = 0
    t0 = time.perf_counter()
    with open(path, "a", encoding="utf-8") as f:
        for batch in batches:
            lines = [{"file": c.request.tag.file, "id": c.request.tag.id, "sample_index": c.sample_index,
                      "output": c.text, "finish_reason": c.finish_reason, "num_tokens": len(c.token_ids)}
                     for c in batch]
            f.write("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in lines))
            f.flush()
            if on_write is not None:
                on_write(lines)
            samples += len(lines)
            tokens += sum(d["num_tokens"] for d in lines)
            progress.update(len(lines))
            progress.set_postfix(tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
    progress.close()
    return samples, tokens


def _merge(files: list, paths: list[Path], parts: Path, n: int, max_records: int) -> None:
    """Rank 0: out_dir/<name> per input, in input order, n lines per record (atomic write)."""
    results = {}
    for d in _read_parts(parts, repair=False):
        results.setdefault((d["file"], d["id"], d["sample_index"]), d)
    for src, dst in zip(files, paths):
        tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for where, raw, _, uid in _iter_records(src, max_records):
                for s in range(n):
                    d = results.get((dst.name, uid, s))
                    if d is None:
                        raise RuntimeError(f"{where}: sample {s} is missing from {parts}")
                    out = {**raw, "output": d["output"], "sample_index": s,
                           "finish_reason": d["finish_reason"], "num_tokens": d["num_tokens"]}
                    f.write(json.dumps(out, ensure_ascii=False) + "\n")
        os.replace(tmp, dst)
