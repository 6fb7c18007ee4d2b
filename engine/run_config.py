"""Every recipe's config schema: one dataclass per section, a one-line docstring per field, and a
`validate()` per section that engine/config.py's parser runs right after parsing, so a bad value
or a bad combination is reported (naming the key) before any data or model work.

    RunConfig                       what SFT and DPO share: output, seed, length, batch, saves
      model: ModelSection           preset or Hugging Face checkpoint, attention backend
      data: DataSection             files, tokenizer, row length, micro-batch rows, cache
      optim: OptimConfig            AdamW and the LR schedule
      parallel: ParallelConfig      sharding, precision, activation checkpointing, compile
      log: LogSection               where the metrics go: metrics.jsonl, TensorBoard, W&B
    DPOConfig(RunConfig)
      dpo: DPOSection               preference loss and reference model
    GenerateConfig                  recipes/generate.py: output, seed
      model: ModelSection           the Hugging Face checkpoint to sample from
      data: PromptSection           input files, tokenizer
      generate: GenerateSection     sampling, stopping, batching, backend
      parallel: ParallelConfig      compute dtype (mixed_precision), timeouts
    FeedbackConfig                  GenerateConfig's sections + feedback: FeedbackSection
    EvalConfig                      model, parallel + eval: EvalSection
The generation sections themselves are engine/generate/config.py.

The world size comes from torchrun's WORLD_SIZE (1 without torchrun), so batch arithmetic is
checked at parse time too.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Literal

from ie_engine.engine.config import ConfigError, launch_world_size
from ie_engine.engine.generate.config import EvalSection, FeedbackSection, GenerateSection, PromptSection


@dataclass
class ModelSection:
    preset: str = "debug"
    """Architecture preset for a fresh model (ignored when `checkpoint` is set)."""
    checkpoint: str = ""
    """Hugging Face Llama or Qwen2 directory to start from; empty = random init from `preset`."""
    attn_backend: Literal["auto", "flash", "flex", "sdpa"] = "auto"
    """Attention backend: auto (flash-attn for bf16 > FlexAttention on CUDA, SDPA on CPU), flash, flex, sdpa."""
    dim: int = 0
    """Width of a fresh model; 0 = the preset's (like n_layers, n_heads, n_kv_heads: for sweeps over the architecture)."""
    n_layers: int = 0
    """Transformer blocks of a fresh model; 0 = the preset's."""
    n_heads: int = 0
    """Attention heads of a fresh model; 0 = the preset's."""
    n_kv_heads: int = 0
    """Key/value heads of a fresh model (GQA); 0 = the preset's (n_heads when the preset has none)."""

    def overrides(self) -> dict[str, int]:
        """The architecture fields set here (nonzero), to replace the preset's."""
        return {k: v for k in ("dim", "n_layers", "n_heads", "n_kv_heads") if (v := getattr(self, k))}

    def validate(self) -> None:
        from ie_engine.engine.model.config import PRESETS
        if self.checkpoint and self.overrides():
            raise ConfigError(f"model: {sorted(self.overrides())} shape a fresh model; model.checkpoint has its own")
        if self.checkpoint:
            return
        if self.preset not in PRESETS:
            raise ConfigError(f"model.preset: unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if any(v < 0 for v in (self.dim, self.n_layers, self.n_heads, self.n_kv_heads)):
            raise ConfigError("model.dim, n_layers, n_heads, n_kv_heads: 0 (the preset's) or positive")
        try:
            dataclasses.replace(PRESETS[self.preset], **self.overrides())  # its own shape checks
        except ValueError as e:
            raise ConfigError(f"model: {e}") from None


@dataclass
class DataSection:
    train_files: list[str] = field(default_factory=list)
    """Training files (JSONL / JSON), each whole or with a cap or share of its records drawn with `seed` (ie_instruct.jsonl, tulu_v2_mix.jsonl:100000, tulu_v2_mix.jsonl:0.3; data/mixture.py); empty = the bundled sample IE data."""
    eval_files: list[str] = field(default_factory=list)
    """Held-out files in the training format (a cap or share as in train_files), scored every `eval_every` steps and at the end (SFT: loss per token; DPO: reward accuracy and margin); [bundled] = the bundled held-out set; empty = none."""
    tokenizer: str = ""
    """sentencepiece tokenizer.model or a tokenizer.json (with its tokenizer_config.json beside it); empty = the checkpoint's, else the bundled one."""
    seq_len: int = 512
    """Packed row length in tokens."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """Examples longer than seq_len: truncate or drop."""
    rows_per_micro_batch: int = 4
    """Packed rows per micro-batch per rank."""
    cache_dir: str = "runs/cache"
    """Where bundled data, the trained tokenizer and token caches live."""
    workers: int = 0
    """Tokenizer processes for the token cache (0 = all cores)."""

    def validate(self) -> None:
        for key in ("seq_len", "rows_per_micro_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        if self.workers < 0:
            raise ConfigError(f"data.workers must be >= 0, got {self.workers}")
        for key in ("train_files", "eval_files"):
            check_sources(f"data.{key}", getattr(self, key))


def check_sources(key: str, entries: list[str]) -> None:
    """Each entry is a file that exists, with a well-formed take if any (data/mixture.py); the
    error names the entry's key (`data.train_files[1]: ...`). "bundled" is the bundled data."""
    from ie_engine.data.mixture import parse_source
    for i, entry in enumerate(entries):
        if entry == "bundled":
            continue
        try:
            source = parse_source(entry)
        except ValueError as e:
            raise ConfigError(f"{key}[{i}]: {e}") from None
        if not os.path.isfile(source.path):
            hint = (" (a cap or share goes after the last ':' as a number: FILE:100000 or FILE:0.3)"
                    if ":" in entry and not source.draws else "")
            raise ConfigError(f"{key}[{i}]: {source.path} does not exist{hint}")


@dataclass
class OptimConfig:
    lr: float = 2e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay, applied to 2-D weights only (not norms)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """'cosine' or 'linear' decay after warmup (to 0), or 'constant'."""
    warmup_ratio: float = 0.03
    """Fraction of the total steps spent warming up linearly from 0."""
    max_grad_norm: float = 1.0
    """Clip gradients to this global norm (0 disables)."""
    implementation: Literal["auto", "fused", "foreach", "for_loop"] = "auto"
    """AdamW kernel: auto (= fused, on CUDA and CPU: 3-7x the for_loop on CPU), fused, foreach, or for_loop (one tensor at a time)."""

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ConfigError(f"optim.warmup_ratio must lie in [0, 1], got {self.warmup_ratio}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"optim.max_grad_norm must be >= 0 (0 disables), got {self.max_grad_norm}")


@dataclass
class ParallelConfig:
    dp_replicate: int = 1
    """HSDP: replicate the sharded model across this many groups (typically nodes); 1 = plain FSDP."""
    mixed_precision: Literal["auto", "bf16", "pure_bf16", "fp32"] = "auto"
    """auto = bf16 compute, fp32 master weights and fp32 gradient reduction on CUDA, fp32 on CPU; pure_bf16 = parameters stored in bf16."""
    activation_checkpointing: Literal["none", "full", "every_k"] = "none"
    """Recompute block activations in backward: none, every block (full), or every ac_every-th block."""
    ac_every: int = 2
    """With activation_checkpointing=every_k: checkpoint the k-th, 2k-th, ... block."""
    compile: bool = False
    """torch.compile each transformer block (in place, parameter names unchanged)."""
    reshard_after_forward: bool = True
    """Free gathered block parameters after forward (ZeRO-3); False keeps them until backward (ZeRO-2-like, more memory, less communication)."""
    grad_sync: Literal["every_micro_batch", "last_micro_batch"] = "every_micro_batch"
    """Gradient accumulation: reduce-scatter after every micro-batch (sharded fp32 gradients only: 4 bytes x params / ranks per rank) or only after the last (no communication in between, but each rank keeps the unsharded fp32 gradients: 4 bytes x params, ~27 GB for 7B)."""
    deterministic: bool = False
    """Deterministic algorithms (torch.use_deterministic_algorithms, a deterministic per-document reduction): bitwise-repeatable runs and resumes on GPU, somewhat slower."""
    timeout_s: int = 600
    """Collective timeout in seconds, so a dead rank ends the job instead of hanging it."""

    def validate(self) -> None:
        world = launch_world_size()
        if self.dp_replicate < 1 or world % self.dp_replicate:
            raise ConfigError(f"parallel.dp_replicate ({self.dp_replicate}) must be >= 1 and divide the "
                              f"number of processes ({world})")
        if self.activation_checkpointing == "every_k" and self.ac_every < 1:
            raise ConfigError(f"parallel.ac_every must be >= 1, got {self.ac_every}")
        if self.timeout_s < 1:
            raise ConfigError(f"parallel.timeout_s must be >= 1, got {self.timeout_s}")


# log.backends that need a package beyond the engine's own dependencies -> that package
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def package_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@dataclass
class WandbSection:
    project: str = "ie-engine"
    """W&B project."""
    entity: str = ""
    """W&B entity (user or team); empty = the logged-in user's default."""
    name: str = ""
    """Run name; empty = output_dir's last part (e.g. sft-llama2-7b)."""
    mode: Literal["online", "offline"] = "online"
    """online: stream to the W&B server (after `wandb login`); offline: only output_dir/wandb/, no network (upload later with `wandb sync`)."""


@dataclass
class LogSection:
    backends: list[Literal["jsonl", "tensorboard", "wandb"]] = field(default_factory=lambda: ["jsonl"])
    """Where every scalar of a step goes (rank 0; the same names and step in each): jsonl (output_dir/metrics.jsonl and loss.png), tensorboard (output_dir/tb/), wandb (log.wandb); engine/trackers.py."""
    wandb: WandbSection = field(default_factory=WandbSection)
    """The W&B run, with wandb in backends."""

    def validate(self) -> None:
        if len(set(self.backends)) != len(self.backends):
            raise ConfigError(f"log.backends names a backend twice: {self.backends}")
        for backend in self.backends:
            package = TRACKER_PACKAGES.get(backend)
            if package and not package_installed(package):
                raise ConfigError(f"log.backends: {backend} needs the {package} package, which is not installed "
                                  f"(pip install {package}, or pip install -e '.[tracking]')")


@dataclass
class RunConfig:
    output_dir: str = "runs/sft"
    """Checkpoints, metrics.jsonl, loss.png and the final Hugging Face export go here."""
    seed: int = 0
    """Seed for initialisation and data order: the draw of data files given with a cap or share, packing ties, the row order."""
    epochs: float = 1.0
    """Passes over the data (max_steps wins when set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps; wins over epochs."""
    global_batch_rows: int = 8
    """Packed rows per optimizer step over all ranks (= world x micro-batch rows x accumulation)."""
    save_every: int = 0
    """Save a resumable checkpoint every this many steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many resumable checkpoints to keep."""
    resume: str = "auto"
    """auto = continue from the newest complete checkpoint in output_dir; never; or a path."""
    eval_every: int = 0
    """Score data.eval_files every this many steps (0 = only at the end of the run)."""
    model: ModelSection = field(default_factory=ModelSection)
    """Model to train."""
    data: DataSection = field(default_factory=DataSection)
    """Training data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Sharding, precision, activation checkpointing, compile."""
    eval: EvalSection = field(default_factory=lambda: EvalSection(generate=GenerateSection(max_new_tokens=512)))
    """With eval.files set: after the final export, generate answers to them and score them (OUT/eval/)."""
    log: LogSection = field(default_factory=LogSection)
    """Experiment tracking: metrics.jsonl, TensorBoard, Weights & Biases."""

    def validate(self) -> None:
        if not self.epochs > 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 (or null), got {self.max_steps}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.save_every < 0 or self.keep_checkpoints < 1:
            raise ConfigError(f"save_every must be >= 0 and keep_checkpoints >= 1, got "
                              f"{self.save_every} and {self.keep_checkpoints}")
        world = launch_world_size()
        per_step = world * self.data.rows_per_micro_batch
        if self.global_batch_rows < 1 or self.global_batch_rows % per_step:
            raise ConfigError(f"global_batch_rows ({self.global_batch_rows}) must be a multiple of the world size "
                              f"({world}) x data.rows_per_micro_batch ({self.data.rows_per_micro_batch}) = {per_step}")

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each rank."""
        return self.global_batch_rows // (world_size * self.data.rows_per_micro_batch)


# dpo.loss_type -> (the fused kernel's loss, per-token averages?, reference-free?): the one
# vocabulary of preference losses; engine/train/losses.py computes them from this table.
PREFERENCE_LOSSES = {
    "sigmoid": ("sigmoid", False, False),
    "robust": ("robust", False, False),
    "hinge": ("hinge", False, False),
    "ipo": ("ipo", True, False),
    "dpo_norm": ("sigmoid", True, False),
    "simpo": ("sigmoid", True, True),
}


@dataclass
class DPOSection:
    beta: float = 0.1
    """Strength of the KL anchor to the reference model (SimPO: the reward scale)."""
    loss_type: Literal[tuple(PREFERENCE_LOSSES)] = "sigmoid"
    """sigmoid (DPO), robust, hinge, ipo (per-token averages), dpo_norm (length-normalised DPO) or simpo (reference-free); engine/train/losses.py."""
    label_smoothing: float = 0.0
    """Assumed label-flip rate for sigmoid (cDPO, in [0, 1]) / robust (in [0, 0.5))."""
    simpo_gamma: float = 0.5
    """SimPO's target reward margin gamma (loss_type=simpo only)."""
    rpo_alpha: float = 0.0
    """Weight of RPO's NLL term on the chosen answers (per-token NLL, averaged over pairs); 0 = off."""
    reference: Literal["cached", "frozen"] = "cached"
    """cached: score pairs once before training and cache them; frozen: keep a frozen model (simpo needs neither)."""

    def validate(self) -> None:
        if not (self.beta > 0 and self.beta != float("inf")):
            raise ConfigError(f"dpo.beta must be a finite number > 0, got {self.beta}")
        ls = self.label_smoothing
        if self.loss_type == "sigmoid" and not 0.0 <= ls <= 1.0:
            raise ConfigError(f"dpo.label_smoothing for loss_type=sigmoid (cDPO) is a flip probability in [0, 1], got {ls}")
        if self.loss_type == "robust" and not 0.0 <= ls < 0.5:
            raise ConfigError(f"dpo.label_smoothing for loss_type=robust must lie in [0, 0.5), got {ls}")
        if self.rpo_alpha < 0:
            raise ConfigError(f"dpo.rpo_alpha must be >= 0, got {self.rpo_alpha}")
        if self.loss_type not in ("sigmoid", "robust") and ls != 0.0:
            raise ConfigError(f"dpo.label_smoothing has no meaning for loss_type={self.loss_type}; leave it 0, got {ls}")


@dataclass
class DPOConfig(RunConfig):
    dpo: DPOSection = field(default_factory=DPOSection)
    """DPO loss settings."""


@dataclass
class FeedbackConfig:
    output_dir: str = "runs/feedback"
    """OUT/feedback.json (IEFeedback pairs for recipes/dpo.py), OUT/scored.jsonl, OUT/stats.json, OUT/samples/."""
    seed: int = 0
    """Sampling seed (with dataset, id and sample index) and the gold draw's seed."""
    model: ModelSection = field(default_factory=ModelSection)
    """The SFT checkpoint to sample from (model.checkpoint)."""
    data: PromptSection = field(default_factory=lambda: PromptSection(files=["bundled-prompts"]))
    """Prompt files (IE records whose last assistant message is the gold '[Answer]: ...')."""
    generate: GenerateSection = field(default_factory=lambda: GenerateSection(n=5, temperature=1.0, max_new_tokens=2048))
    """Sampling: ADELIE's 5 samples per prompt at temperature 1.0, top_p 1.0, at most 2048 new tokens."""
    feedback: FeedbackSection = field(default_factory=FeedbackSection)
    """Pair building."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Only mixed_precision, timeout_s and deterministic apply: every rank holds a full model copy."""

    def validate(self) -> None:
        if not self.model.checkpoint:
            raise ConfigError("model.checkpoint: feedback needs the SFT model's Hugging Face directory")
        if self.generate.n < 2:
            raise ConfigError(f"generate.n must be >= 2 to rank samples against each other, got {self.generate.n}")


@dataclass
class EvalConfig:
    output_dir: str = "runs/eval"
    """Predictions OUT/<input file name>, OUT/metrics.json and OUT/metrics.md."""
    seed: int = 0
    """Sampling seed (only matters with eval.generate.temperature > 0)."""
    model: ModelSection = field(default_factory=ModelSection)
    """The Hugging Face checkpoint to evaluate (model.checkpoint)."""
    eval: EvalSection = field(default_factory=lambda: EvalSection(files=["bundled"]))
    """Test files, scoring and generation settings."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Only mixed_precision, timeout_s and deterministic apply: every rank holds a full model copy."""

    def validate(self) -> None:
        if not self.model.checkpoint:
            raise ConfigError("model.checkpoint: evaluation needs a Hugging Face directory (e.g. runs/sft/final)")
        if not self.eval.files:
            raise ConfigError("eval.files: give the test files to evaluate (or [bundled])")


@dataclass
class GenerateConfig:
    output_dir: str = "runs/generate"
    """OUT/<input file name> per input (input order, n lines per record); partial results in OUT/parts/."""
    seed: int = 0
    """With (dataset, id, sample index), what each sample's randomness depends on."""
    model: ModelSection = field(default_factory=ModelSection)
    """The Hugging Face checkpoint to sample from (model.checkpoint)."""
    data: PromptSection = field(default_factory=PromptSection)
    """Prompts."""
    generate: GenerateSection = field(default_factory=GenerateSection)
    """Sampling, stopping, batching, backend."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Only mixed_precision (auto: bf16 on CUDA, fp32 on CPU; fp32 forces fp32), timeout_s and deterministic apply: every rank holds a full model copy."""

    def validate(self) -> None:
        if not self.model.checkpoint:
            raise ConfigError("model.checkpoint: generation needs a Hugging Face Llama directory (e.g. runs/sft/final)")
