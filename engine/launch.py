"""What every recipe does around its main(): the embedded default config file unless the
command line names one, distributed start-up with the resolved config printed and saved, and
errors for people: a bad config or bad input prints its message alone (naming the key, or the
file and line) and exits 2, never a traceback.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ie_engine.data.formats import DataError
from ie_engine.engine import parallel
from ie_engine.engine.config import ConfigError, format_config


def with_default_config(argv: list[str] | None, default: Path) -> list[str]:
    """The recipe's embedded default config file, unless the command line names one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("--config", "-c") or a.startswith("--config=") for a in argv):
        return argv
    return ["--config", str(default)] + argv


def start(cfg) -> parallel.World:
    """Initialise distributed and the seed; rank 0 prints the resolved config and saves it."""
    world = parallel.init_distributed(cfg.parallel.timeout_s)
    torch.manual_seed(cfg.seed)
    if cfg.parallel.deterministic:
        # cuBLAS needs a fixed workspace for deterministic GEMMs; set before the first one.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
    if world.rank == 0:
        print(format_config(cfg), flush=True)
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "config.yaml").write_text(format_config(cfg) + "\n")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return world


# The exceptions that mean bad config or bad input, not a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, FileNotFoundError)


def run_recipe(main) -> None:
    """Call main(); on a user error print `error: <message>` (rank 0, or every rank when the
    error is rank-local) and exit 2; otherwise exit 0 without interpreter teardown
    (parallel.exit_process)."""
    try:
        main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        parallel.exit_process(2)
    parallel.exit_process(0)
