"""The whole ADELIE method as one command: SFT -> IEFeedback (samples of the SFT model, ranked
against the gold) -> DPO on those pairs -> evaluation of the base, SFT and DPO models on held-out
IE test sets, one table at the end (F1 per task and the average, per model).

    python recipes/adelie.py [nproc_per_node=2] [output_dir=runs/adelie] ['sft_args=[key=value,...]'] ...

Each stage is its own recipe, launched with torchrun on nproc_per_node processes and the stage's
embedded default plus the overrides given here (sft_args, feedback_args, dpo_args, eval_args):
    OUT/sft       recipes/sft.py                   -> OUT/sft/final
    OUT/feedback  recipes/feedback.py  (SFT model) -> OUT/feedback/feedback.json
    OUT/dpo       recipes/dpo.py  (from OUT/sft/final on feedback.json) -> OUT/dpo/final
    OUT/eval/{base,sft,dpo}  recipes/eval.py       -> metrics.json each
    OUT/report.md, OUT/report.png, OUT/report.json
With no arguments: the embedded defaults on the bundled data (held-out test set and feedback
prompt pool kept apart from the SFT data); the base model is the SFT stage's starting point (its
model.checkpoint, or the randomly initialised preset, exported to OUT/base). A stage whose output
is complete is skipped, so a killed pipeline resumes where it stopped (force=true redoes all).
Real data and checkpoints: pass each stage's keys, e.g. 'sft_args=[--config,recipes/configs/
sft_llama2_7b.yaml,model.checkpoint=/models/Llama-2-7b-hf]'; the README lists the per-stage commands.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ie_engine.engine import launch
from ie_engine.engine.config import ConfigError, parse_config

RECIPES = Path(__file__).parent


@dataclass
class PipelineConfig:
    output_dir: str = "runs/adelie"
    """Every stage's output, the report and the logs (OUT/logs/<stage>.log)."""
    nproc_per_node: int = 2
    """Processes per stage (torchrun --nproc_per_node)."""
    sft_args: list[str] = field(default_factory=list)
    """Extra arguments of recipes/sft.py (key=value, or --config FILE)."""
    feedback_args: list[str] = field(default_factory=list)
    """Extra arguments of recipes/feedback.py."""
    dpo_args: list[str] = field(default_factory=list)
    """Extra arguments of recipes/dpo.py."""
    eval_args: list[str] = field(default_factory=list)
    """Extra arguments of recipes/eval.py (each of the three models)."""
    force: bool = False
    """Redo stages whose output is already complete."""

    def validate(self) -> None:
        if self.nproc_per_node < 1:
            raise ConfigError(f"nproc_per_node must be >= 1, got {self.nproc_per_node}")


CONFIG = PipelineConfig  # the schema of this recipe's config
DEFAULT_CONFIG = RECIPES / "configs" / "adelie_default.yaml"


def stage(name: str, recipe: str, args: list[str], cfg: PipelineConfig, done: Path) -> float:
    """Run one recipe under torchrun unless `done` exists; its output goes to the console and
    OUT/logs/<name>.log. Returns the wall seconds (0 when skipped)."""
    if done.exists() and not cfg.force:
        print(f"[adelie] {name}: done already ({done})", flush=True)
        return 0.0
    log = Path(cfg.output_dir) / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={cfg.nproc_per_node}",
           "--standalone", str(RECIPES / recipe), *args]
    print(f"[adelie] {name}: {' '.join(cmd[3:])}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            if not line.startswith(" "):  # the resolved config is printed indented: keep it in the log
                sys.stdout.write(f"  {line}")
        if proc.wait() != 0:
            raise ConfigError(f"stage {name} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def export_base(cfg: PipelineConfig, out: Path) -> str:
    """The SFT stage's starting point: its model.checkpoint, or its randomly initialised preset
    exported (what SFT starts from: same seed, same tokenizer)."""
    from ie_engine.engine.run_config import RunConfig
    from ie_engine.recipes import sft

    sft_cfg = parse_config(RunConfig, launch.with_default_config(cfg.sft_args, sft.DEFAULT_CONFIG))
    if sft_cfg.model.checkpoint:
        return sft_cfg.model.checkpoint
    base = out / "base"
    if (base / "config.json").exists() and not cfg.force:
        return str(base)
    from ie_engine.data.bundled import ensure_default_assets
    from ie_engine.data.tokenizer import Tokenizer
    from ie_engine.engine.model.config import build_model_config
    from ie_engine.engine.model.hf_checkpoint import save_hf
    from ie_engine.engine.model.transformer import build_model

    tokenizer = sft_cfg.data.tokenizer or ensure_default_assets(sft_cfg.data.cache_dir)["tokenizer"]
    model = build_model(build_model_config(sft_cfg.model.preset, vocab_size=Tokenizer(tokenizer).vocab_size), "meta")
    model.to_empty(device="cpu")
    model.init_weights(sft_cfg.seed)
    save_hf(model, base, tokenizer_path=tokenizer)
    return str(base)


def report(out: Path, models: list[str]) -> str:
    """One table: F1 (percent) per test set and the average, per model; report.md/.json/.png."""
    from ie_engine.data.files import write_atomic

    metrics = {m: json.loads((out / "eval" / m / "metrics.json").read_text()) for m in models}
    sets = [k for k in metrics[models[0]] if ":" in k] or list(metrics[models[0]])
    labels = [s.split(":")[-1] for s in sets]  # "heldout:bundled-ner" -> "bundled-ner"
    rows = ["| model | " + " | ".join(labels) + " | average |", "|---|" + "---:|" * (len(sets) + 1)]
    table = {}
    for m in models:
        f1 = [100 * metrics[m][s]["f1"] for s in sets]
        table[m] = dict(zip(sets, f1), average=sum(f1) / len(f1))
        rows.append(f"| {m} | " + " | ".join(f"{x:.1f}" for x in f1) + f" | {table[m]['average']:.1f} |")
    text = "\n".join(rows) + "\n"
    write_atomic(out / "report.md", "# ADELIE pipeline: held-out micro-F1 (%)\n\n" + text)
    write_atomic(out / "report.json", json.dumps(table, indent=1) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(sets), 3.2))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        ax.bar([j + i * width for j in range(len(sets) + 1)], [table[m][s] for s in sets] + [table[m]["average"]],
               width, label=m)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(sets) + 1)], labels + ["average"], fontsize=8)
    ax.set_ylabel("micro-F1 (%)")
    ax.set_title("held-out IE: base vs SFT vs DPO")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=120)
    plt.close(fig)
    return text


def main(argv=None):
    cfg = parse_config(CONFIG, launch.with_default_config(argv, DEFAULT_CONFIG))
    out = Path(cfg.output_dir)
    cache = [f"data.cache_dir={out / 'cache'}"]
    t0, times = time.perf_counter(), {}
    base = export_base(cfg, out)
    times["sft"] = stage("sft", "sft.py", [*cache, f"output_dir={out / 'sft'}", *cfg.sft_args], cfg,
                         out / "sft" / "final" / "config.json")
    sft_final = out / "sft" / "final"
    times["feedback"] = stage("feedback", "feedback.py", [*cache, f"model.checkpoint={sft_final}",
                                                          f"output_dir={out / 'feedback'}", *cfg.feedback_args],
                              cfg, out / "feedback" / "stats.json")
    times["dpo"] = stage("dpo", "dpo.py", [*cache, f"model.checkpoint={sft_final}", f"output_dir={out / 'dpo'}",
                                           f"data.train_files=[{out / 'feedback' / 'feedback.json'}]", *cfg.dpo_args],
                         cfg, out / "dpo" / "final" / "config.json")
    models = {"base": base, "sft": str(sft_final), "dpo": str(out / "dpo" / "final")}
    for name, checkpoint in models.items():
        times[f"eval-{name}"] = stage(f"eval-{name}", "eval.py", [f"eval.cache_dir={out / 'cache'}",
                                                                 f"model.checkpoint={checkpoint}",
                                                                 f"output_dir={out / 'eval' / name}", *cfg.eval_args],
                                      cfg, out / "eval" / name / "metrics.json")
    table = report(out, list(models))
    wall = time.perf_counter() - t0
    print(f"\n{table}\n[adelie] {wall:.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in times.items())}); "
          f"{out / 'report.md'}, {out / 'report.png'}", flush=True)


if __name__ == "__main__":
    launch.run_recipe(main)
