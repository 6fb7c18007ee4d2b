"""Where a training run's scalars go: the backends of log.backends, on rank 0 only (log.py's
MetricsLogger holds them, beside the progress bar).

    jsonl        output_dir/metrics.jsonl, one JSON object per optimizer step (what loss.png is drawn from)
    tensorboard  event files under output_dir/tb/ (torch.utils.tensorboard, which needs the
                 tensorboard package): `tensorboard --logdir output_dir/tb`
    wandb        a Weights & Biases run (log.wandb: project, entity, name, mode), files under
                 output_dir/wandb/; mode=offline needs no network

Each backend gets every scalar of a step's record under the same name and at the same step
(the held-out eval_* values included, at the steps they were measured), and the resolved config
once at the start: TensorBoard as the text entry "config", W&B as the run's config. A resumed
run continues: metrics.jsonl and the event files drop the steps after the checkpoint, the W&B
run is the same one (its id is kept in output_dir/wandb/run_id).

A logging backend never stops training: one that fails to start or fails mid-run gives one
warning naming it and the error, and is left out for the rest of the run. That a package is
missing is reported when the config is parsed (engine/run_config.py, LogSection).
"""
from __future__ import annotations

import json
import uuid
import warnings
from pathlib import Path

from ie_engine.engine.config import format_config, to_dict


def scalars(record: dict) -> dict[str, float]:
    """The values of a metrics record that are numbers, without its step."""
    return {k: v for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class JsonlTracker:
    """output_dir/metrics.jsonl: a fresh run starts it anew, a resumed one keeps the steps up to the checkpoint."""

    def __init__(self, output_dir: str, start_step: int, resumed: bool):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resumed and self.path.exists():
            self.path.unlink()
        elif resumed and self.path.exists():  # steps logged after the checkpoint we resume are redone
            keep = [l for l in self.path.read_text().splitlines() if l and json.loads(l)["step"] <= start_step]
            self.path.write_text("".join(l + "\n" for l in keep))

    def log(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


class TensorBoardTracker:
    """Event files under output_dir/tb/; the resolved config as the text entry "config"."""

    def __init__(self, output_dir: str, config_yaml: str, start_step: int, resumed: bool):
        from torch.utils.tensorboard import SummaryWriter
        # purge_step: TensorBoard hides what an earlier run logged from this step on (redone steps)
        self.writer = SummaryWriter(str(Path(output_dir) / "tb"), purge_step=start_step + 1 if resumed else None)
        # TensorBoard renders text as Markdown: indented by 4 spaces, the YAML shows as code
        self.writer.add_text("config", "\n".join("    " + line for line in config_yaml.splitlines()), start_step)

    def log(self, record: dict) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run with the resolved config as its config; a resumed training run resumes it."""

    def __init__(self, section, output_dir: str, config: dict, resumed: bool):
        import wandb
        id_file = Path(output_dir) / "wandb" / "run_id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        run_id = id_file.read_text().strip() if resumed and id_file.exists() else uuid.uuid4().hex[:12]
        self.run = wandb.init(project=section.project, entity=section.entity or None,
                              name=section.name or Path(output_dir).resolve().name, mode=section.mode,
                              dir=output_dir, config=config, id=run_id, resume="allow",
                              # the terminal keeps stdout: the progress bar's redraws would fill W&B's console log
                              settings=wandb.Settings(console="off"))
        id_file.write_text(run_id + "\n")

    def log(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The started backends, by name; a backend that raises is warned about once and dropped."""

    def __init__(self, starters: dict):
        """starters: {name: a function that starts the backend and returns it}."""
        self.backends: dict = {}
        for name, start in starters.items():
            try:
                self.backends[name] = start()
            except Exception as e:  # noqa: BLE001 - whatever a backend raises, training goes on
                self._drop(name, "could not start", e)

    def log(self, record: dict) -> None:
        for name, backend in list(self.backends.items()):
            try:
                backend.log(record)
            except Exception as e:  # noqa: BLE001
                self._drop(name, f"failed at step {record.get('step')}", e)

    def close(self) -> None:
        for name, backend in list(self.backends.items()):
            try:
                backend.close()
            except Exception as e:  # noqa: BLE001
                self._drop(name, "failed to close", e)

    def _drop(self, name: str, what: str, error: Exception) -> None:
        self.backends.pop(name, None)
        rest = ", ".join(self.backends) or "none"
        warnings.warn(f"log.backends: {name} {what} ({type(error).__name__}: {error}); training goes on "
                      f"without it (still logging to: {rest})", RuntimeWarning, stacklevel=3)


def build_trackers(cfg, start_step: int, resumed: bool) -> Trackers:
    """The backends of cfg.log.backends for a training run (rank 0 calls this)."""
    starters = {
        "jsonl": lambda: JsonlTracker(cfg.output_dir, start_step, resumed),
        "tensorboard": lambda: TensorBoardTracker(cfg.output_dir, format_config(cfg), start_step, resumed),
        "wandb": lambda: WandbTracker(cfg.log.wandb, cfg.output_dir, to_dict(cfg), resumed),
    }
    return Trackers({name: starters[name] for name in cfg.log.backends})
