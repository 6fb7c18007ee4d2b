"""The config system the recipes use: typed nested dataclasses <- a YAML/TOML file given with
--config <- dotted key=value overrides that win. Unknown keys and wrong types are errors that name
the key; after parsing, every section's `validate()` runs, so every constraint (and every
relationship between sections, such as the batch size vs the world size) fails here, before any
data or model work. The schema itself is engine/run_config.py; the architecture engine/model/config.py.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import sys
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config problem, reported before any model is built; the message names the key."""


def _check_type(key: str, value: Any, tp: Any) -> Any:
    """Return value converted to tp (int->float allowed) or raise ConfigError naming key."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key {key!r}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_check_type(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "2e-5" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
    if tp in (int, float, str) and (not isinstance(value, tp) or isinstance(value, bool)):
        raise ConfigError(f"config key {key!r}: expected {tp.__name__}, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _apply(cfg: Any, key: str, value: Any, prefix: str = "") -> None:
    """Set dotted `key` on nested dataclass `cfg`, checking the name and the type."""
    head, _, rest = key.partition(".")
    full = prefix + head
    hints = typing.get_type_hints(type(cfg))
    if head not in {f.name for f in fields(cfg)}:
        raise ConfigError(f"unknown config key {full!r}; {type(cfg).__name__} has "
                          f"{sorted(f.name for f in fields(cfg))}")
    current = getattr(cfg, head)
    if rest:
        if not is_dataclass(current):
            raise ConfigError(f"config key {full!r} is a value, not a section (got {key!r})")
        _apply(current, rest, value, full + ".")
    elif is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {full!r} is a section; give a mapping, got {value!r}")
        for k, v in value.items():
            _apply(current, str(k), v, full + ".")
    else:
        setattr(cfg, head, _check_type(full, value, hints[head]))


def load_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib
        data = tomllib.loads(text)
    else:
        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    return data


def parse_config(cls: type, argv: list[str] | None = None, defaults: Any = None) -> Any:
    """Build `cls` (a dataclass) from defaults, then `--config FILE`, then `key=value` overrides.

    Values on the command line are parsed as YAML scalars (`lr=2e-5`, `flag=true`, `x=null`,
    `ids=[1,2]`), then type-checked against the dataclass field.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = copy.deepcopy(defaults) if defaults is not None else cls()
    overrides = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c"):
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a file path")
            for k, v in load_file(argv[i + 1]).items():
                _apply(cfg, str(k), v)
            i += 2
            continue
        if arg.startswith("--config="):
            for k, v in load_file(arg.split("=", 1)[1]).items():
                _apply(cfg, str(k), v)
        elif "=" in arg:
            key, raw = arg.split("=", 1)
            overrides.append((key.lstrip("-"), raw))
        else:
            raise ConfigError(f"cannot parse argument {arg!r}: expected --config FILE or key=value")
        i += 1
    for key, raw in overrides:  # the command line wins over the file, whatever the order
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (int, float)) and not isinstance(value, bool) and _wants_str(cfg, key):
            value = raw  # e.g. name=123 for a str field
        _apply(cfg, key, value)
    validate(cfg)
    return cfg


def validate(cfg: Any) -> None:
    """Run `validate()` of cfg and of every nested section (innermost first); each raises
    ConfigError naming the key."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            validate(value)
    if hasattr(cfg, "validate"):
        cfg.validate()


def _wants_str(cfg: Any, key: str) -> bool:
    *path, last = key.split(".")
    for p in path:
        cfg = getattr(cfg, p, None)
        if cfg is None or not is_dataclass(cfg):
            return False
    return typing.get_type_hints(type(cfg)).get(last) is str


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def format_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip()


def launch_world_size() -> int:
    """The number of processes this launch will have (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
