"""The lent GPU machine's Python, emulated for tests (tests/test_gpu_check.py): the device image
has no rouge_score, nltk, trl, flash_attn or vllm, and the engine is not installed there (a copy
of the working tree, no pip install: bench/source_tree.py links it into build/source_tree).

`device_env(tmp)` writes a sitecustomize.py into tmp and returns an environment whose Python
(and every subprocess it starts: PYTHONPATH is inherited) imports as the device's does: a
meta-path finder in place of the path finder answers "not found" for the hidden packages (their
import raises ModuleNotFoundError, importlib.util.find_spec gives None, importlib.metadata
lists no distribution), and for `ie_engine` anywhere but a build/source_tree link folder (the
editable install's finder is dropped; its native packer too, so data/pack.py takes its NumPy
twin, as on the device).
"""
from __future__ import annotations

import os
import pathlib

HIDDEN = ("rouge_score", "nltk", "trl", "flash_attn", "vllm")

_SITECUSTOMIZE = '''"""Written by tests/device_image.py: this Python imports as the lent GPU machine's does."""
import importlib.machinery
import sys

HIDDEN = {hidden!r}
SOURCE_TREE = "source_tree"


class DeviceImage:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        top = name.split(".")[0]
        if top in HIDDEN or name == "ie_engine.data._packer":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if top == "ie_engine" and spec is not None:
            where = [str(p) for p in (spec.submodule_search_locations or [])] + [str(spec.origin or "")]
            if not any(SOURCE_TREE in p for p in where):  # an installed copy: not on the device
                return None
        return spec

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        for dist in importlib.machinery.PathFinder.find_distributions(*args, **kwargs):
            name = (dist.metadata["Name"] or "").lower().replace("-", "_")
            if name not in HIDDEN and name != "ie_engine":
                yield dist

    @classmethod
    def invalidate_caches(cls):
        importlib.machinery.PathFinder.invalidate_caches()


sys.meta_path[:] = [DeviceImage if f is importlib.machinery.PathFinder else f for f in sys.meta_path
                    if not type(f).__module__.startswith("_editable")]
'''


def device_env(tmp: pathlib.Path, base: dict | None = None) -> dict:
    """An environment for subprocesses that import as the device image does (module docstring)."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(hidden=HIDDEN))
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env.pop("TRITON_INTERPRET", None)  # the check sets what its stages need
    return env
