"""Every recipe command line in the README parses and validates for the world size it names
(nnodes x nproc_per_node), exactly as the recipe would parse it at start-up, before any data or
model work: a command that could never start (batch arithmetic, unknown keys) fails here."""
import importlib
import os
import re
import shlex
from pathlib import Path

import pytest

from ie_engine.engine.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for cmd in block.replace("\\\n", " ").splitlines():
            for part in cmd.split("&&"):
                if re.search(r"recipes/\w+\.py", part):
                    commands.append(part.strip())
    return commands


def recipe_invocation(cmd: str) -> tuple[str, int, list[str]]:
    """-> (recipe name, world size, the recipe's own arguments)."""
    words = shlex.split(cmd.replace("$HEAD_NODE", "head"), comments=True)
    i = next(i for i, w in enumerate(words) if re.fullmatch(r"recipes/\w+\.py", w))
    launcher, args = words[:i], words[i + 1:]
    opts = dict(re.findall(r"--(nnodes|nproc_per_node)[ =](\S+)", " ".join(launcher)))
    world = int(opts.get("nnodes", 1)) * int(opts.get("nproc_per_node", 1))
    return Path(words[i]).stem, world, args


COMMANDS = readme_commands()

# The README's data files stand for the reader's own (/data/..., the 7B configs' /path/to/...,
# runs/... written by an earlier stage): data.train_files entries there count as present; their
# syntax (a cap or share) and every other check still run.
PLACEHOLDERS = ("/data/", "/path/to/", "runs/")


@pytest.fixture
def placeholder_files(monkeypatch):
    real = os.path.isfile
    monkeypatch.setattr(os.path, "isfile", lambda p: str(p).startswith(PLACEHOLDERS) or real(p))


def test_the_readme_has_recipe_commands():
    assert len(COMMANDS) >= 4


@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command_parses_for_its_world_size(cmd, monkeypatch, placeholder_files):
    name, world, args = recipe_invocation(cmd)
    monkeypatch.setenv("WORLD_SIZE", str(world))
    module = importlib.import_module(f"ie_engine.recipes.{name}")
    if args[:1] == ["--score-only"]:  # no config: prediction files (tests/recipes/test_eval_recipe.py)
        return
    monkeypatch.chdir(REPO)
    try:
        parse_config(module.CONFIG, module.launch.with_default_config(args, module.DEFAULT_CONFIG))
    except ConfigError as e:
        if "package, which is not installed" in str(e):  # a log.backends example without its package
            pytest.skip(str(e))
        pytest.fail(f"{cmd}\n  (world size {world}): {e}")


def test_world_size_is_checked_at_parse_time(monkeypatch, placeholder_files):
    """The old README's 4-node example: 32 ranks x 4 rows can never make a batch of 32 rows."""
    monkeypatch.setenv("WORLD_SIZE", "32")
    from ie_engine.recipes import sft
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match="global_batch_rows"):
        parse_config(sft.CONFIG, ["--config", "recipes/configs/sft_llama2_7b.yaml"])
