"""Import the project from a source tree that is not installed (a lent GPU machine gets a copy of
the working tree and no network, so no `pip install -e .`), without putting the repo root on
sys.path: `ie_engine` is a folder of links, one per root folder (engine/ -> ie_engine.engine,
...), made under build/ and put first on sys.path and PYTHONPATH, so stages launched as
`python -m ie_engine.bench.<suite>` import the same files. An installed engine is used as is.

    python3 bench/gpu_check.py --out "$OUT"     # on the device: the script calls ensure_importable()
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = ("engine", "kernels", "data", "recipes", "bench")  # pyproject.toml's wheel.packages


def ensure_importable() -> str:
    """'installed' or the folder added to sys.path/PYTHONPATH. Without the native packer the
    NumPy twin packs (data/pack.py says so)."""
    if importlib.util.find_spec("ie_engine") is not None:
        return "installed"
    root = REPO_ROOT / "build" / "source_tree"
    pkg = root / "ie_engine"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in FOLDERS:
        link = pkg / name
        if not link.exists():
            link.symlink_to(REPO_ROOT / name, target_is_directory=True)
    sys.path.insert(0, str(root))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    importlib.invalidate_caches()
    return str(root)
