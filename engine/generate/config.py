"""The generation recipes' config sections (prompts, sampling, IEFeedback pairs, evaluation), the
same way as engine/run_config.py, which composes them into each recipe's config: one dataclass per
section, a one-line docstring per field, a `validate()` per section run right after parsing.

    PromptSection     data.*      input files, tokenizer, record limit
    GenerateSection   generate.*  sampling, stopping, batching, backend
    FeedbackSection   feedback.*  ADELIE's pair rules (limit, gold rate, min delta)
    EvalSection       eval.*      test files, scoring, generation settings (also SFT/DPO's eval.*)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from ie_engine.engine.config import ConfigError, launch_world_size


@dataclass
class PromptSection:
    files: list[str] = field(default_factory=list)
    """Input JSONL files (IEInstruct/ADELIE: dataset or datasets, id, messages); bundled = the bundled held-out test set, bundled-prompts = the bundled IEFeedback prompt pool; empty = [bundled]."""
    tokenizer: str = ""
    """tokenizer.model or tokenizer.json; empty = the checkpoint's, else the bundled one."""
    max_records: int = 0
    """Read at most this many records of each file (0 = all)."""
    cache_dir: str = "runs/cache"
    """Where the bundled data and tokenizer live."""

    def validate(self) -> None:
        if self.max_records < 0:
            raise ConfigError(f"data.max_records must be >= 0 (0 = all), got {self.max_records}")
        names = [os.path.basename(f) for f in self.files]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"data.files: outputs are named after the inputs, and {dup} appear twice")


@dataclass
class GenerateSection:
    n: int = 1
    """Samples per prompt (IEFeedback: 5); they share one prefill."""
    temperature: float = 0.0
    """0 = greedy; else the softmax temperature (IEFeedback: 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the most likely tokens until their mass reaches top_p (1 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    max_new_tokens: int = 512
    """Most tokens generated per sample (also capped by the model's max_seq_len)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: a sample ends at the first one, which is not part of its output (EOS always stops)."""
    backend: Literal["engine", "vllm"] = "engine"
    """engine: our Transformer with a KV cache (default; the only one on CPU); vllm: vLLM on the same checkpoint."""
    batch_size: int = 64
    """Prompts decoded at once per rank (n rows each); finished rows are refilled with waiting prompts."""
    prefill_tokens: int = 8192
    """Most prompt tokens (padded) in one prefill forward."""
    cache_memory_fraction: float = 0.6
    """CUDA: the KV cache takes at most this fraction of the memory free after the model is loaded (fewer rows than batch_size x n when that would not fit)."""
    check_every: int = 0
    """Decode steps between the host's looks at the device (done flags, stop strings, refills); 0 = 1 on CPU, 8 on CUDA."""
    cuda_graphs: bool = True
    """CUDA: replay each decode step as a CUDA graph (static shapes); ignored on CPU."""
    compile: bool = False
    """CUDA: torch.compile the decode step before capturing it; ignored on CPU."""
    tensor_parallel: int = 1
    """vllm: GPUs the model is split over (tensor parallelism), for a model that does not fit one GPU; vllm runs in one launched process."""

    def validate(self) -> None:
        checks = [("n", self.n >= 1, ">= 1"), ("temperature", self.temperature >= 0, ">= 0 (0 = greedy)"),
                  ("top_p", 0 < self.top_p <= 1, "in (0, 1]"), ("top_k", self.top_k >= 0, ">= 0 (0 = off)"),
                  ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                  ("prefill_tokens", self.prefill_tokens >= 1, ">= 1"),
                  ("cache_memory_fraction", 0 < self.cache_memory_fraction <= 1, "in (0, 1]"),
                  ("check_every", self.check_every >= 0, ">= 0 (0 = auto)"),
                  ("tensor_parallel", self.tensor_parallel >= 1, ">= 1")]
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"generate.{key} must be {what}, got {getattr(self, key)}")
        if any(not s for s in self.stop):
            raise ConfigError("generate.stop: an empty stop string would end every sample at once")
        if self.tensor_parallel > 1 and self.backend != "vllm":
            raise ConfigError("generate.tensor_parallel > 1 needs generate.backend=vllm (each engine rank "
                              "holds a full model copy)")
        if self.backend == "vllm" and launch_world_size() > 1:
            raise ConfigError(f"generate.backend=vllm runs its own workers: launch one process (python "
                              f"recipes/generate.py ...), not {launch_world_size()}, and spread the model over "
                              "GPUs with generate.tensor_parallel")


@dataclass
class FeedbackSection:
    limit: int = 10000
    """Most pairs in all (ADELIE: 10,000): limit - int(limit x gold_rate) model-vs-model pairs first, then gold-vs-model."""
    gold_rate: float = 0.7
    """Share of the limit drawn as gold-vs-model pairs from the prompts left over (ADELIE: 0.7)."""
    min_delta: float = 0.1
    """A pair is kept when chosen's score exceeds rejected's by more than this (ADELIE: 0.1)."""
    keep_identical: bool = False
    """Keep pairs whose chosen and rejected texts are equal (ADELIE's exact behaviour; they teach nothing)."""

    def validate(self) -> None:
        if self.limit < 1:
            raise ConfigError(f"feedback.limit must be >= 1, got {self.limit}")
        if not 0.0 <= self.gold_rate <= 1.0:
            raise ConfigError(f"feedback.gold_rate must lie in [0, 1], got {self.gold_rate}")
        if self.min_delta < 0:
            raise ConfigError(f"feedback.min_delta must be >= 0, got {self.min_delta}")


@dataclass
class EvalSection:
    files: list[str] = field(default_factory=list)
    """IE test files in ADELIE's format (the last assistant message is the gold); [bundled] = the bundled held-out set; empty = no generation eval."""
    max_records: int = 0
    """Read at most this many records of each file (0 = all)."""
    task: str = ""
    """Force a scorer (ner, relation, temporal, ed, eae, ondemand, openie, generic) or a dataset name; empty = from each record's dataset."""
    sim_model: str = ""
    """Local all-MiniLM-L6-v2 directory for on-demand IE header similarity; empty = exact-match header F1."""
    openie_gold: str = ""
    """ROBUST gold JSON for Open IE (from the ROBUST authors)."""
    tokenizer: str = ""
    """tokenizer.model or tokenizer.json; empty = the checkpoint's."""
    cache_dir: str = "runs/cache"
    """Where the bundled test set lives."""
    generate: GenerateSection = field(default_factory=lambda: GenerateSection(max_new_tokens=2048))
    """Generation settings: ADELIE's (greedy, at most 2048 new tokens) by default."""

    def validate(self) -> None:
        if self.max_records < 0:
            raise ConfigError(f"eval.max_records must be >= 0 (0 = all), got {self.max_records}")
        if self.task:
            from ie_engine.data.scoring import task_for
            try:
                task_for(self.task)
            except ValueError as e:
                raise ConfigError(f"eval.task: {e}") from None
