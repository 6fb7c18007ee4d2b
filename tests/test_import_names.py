"""The project lives beside Hugging Face's stack: everything it installs and imports is under
`ie_engine`, and none of its root folders (engine/, kernels/, data/, recipes/, bench/) shadows a
namesake, wherever Python starts. transformers >= 5.25 imports Hugging Face's `kernels`
distribution as `kernels`; when kernels/ was a regular package, `import kernels` from the repo
root (python -m, python -c, pytest) found ours and transformers failed to import.

Each check runs in a fresh interpreter, from the repo root (where the current directory is on
sys.path) and from elsewhere, through `python -c`, `python -m` and a recipe run as a script.
"""
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BARE = ("engine", "kernels", "data", "recipes", "bench")

# In one process: transformers' model and pipeline, then every module of the project, then
# Hugging Face's `kernels`; no bare name may resolve to a file of this repo.
CHECK = textwrap.dedent('''
    import importlib, sys
    from pathlib import Path
    repo = Path(sys.argv[1]).resolve()
    from transformers import LlamaForCausalLM, pipeline
    import ie_engine
    optional = {"vllm", "flash_attn", "trl", "nltk", "rouge_score", "wandb", "tensorboard"}
    names = []
    for folder in ("engine", "kernels", "data", "recipes", "bench"):  # every module the wheel maps
        for path in sorted((repo / folder).rglob("*.py")):
            rel = path.relative_to(repo).with_suffix("")
            if rel.name in ("__main__", "conftest") or rel.name.startswith("test_"):
                continue
            name = ".".join(["ie_engine", *(rel.parts[:-1] if rel.name == "__init__" else rel.parts)])
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as e:  # an optional backend this environment lacks
                if e.name.split(".")[0] not in optional:
                    raise
            names.append(name)
    for want in ("ie_engine.engine.model.transformer", "ie_engine.engine.train.fit",
                 "ie_engine.engine.generate.generator", "ie_engine.kernels.fused_linear_logprob",
                 "ie_engine.data.prepare", "ie_engine.recipes.sft", "ie_engine.bench.gpu_check"):
        assert want in names, (want, names)
    import kernels
    assert hasattr(kernels, "get_kernel"), kernels.__file__
    for bare in ("engine", "kernels", "data", "recipes", "bench"):
        mod = sys.modules.get(bare)
        where = [getattr(mod, "__file__", None) or "", *list(getattr(mod, "__path__", []) or [])]
        ours = [repo / f for f in ("engine", "kernels", "data", "recipes", "bench")]
        assert not any(w and Path(w).resolve().is_relative_to(o) for w in where for o in ours), (bare, where)
    print("ok", len(names))
''')


def _run(cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_one_process_imports_transformers_and_every_project_module(where, tmp_path):
    cwd = REPO if where == "repo_root" else tmp_path
    proc = _run([sys.executable, "-c", CHECK, str(REPO)], cwd)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stdout + proc.stderr[-4000:]


def test_no_root_folder_is_a_regular_package():
    """A root folder with __init__.py wins over site-packages from the repo root."""
    assert not [name for name in BARE if (REPO / name / "__init__.py").exists()]


def _bare_imports(stderr: str) -> list[str]:
    """Modules a `-X importtime` run imported under a bare project name."""
    out = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name.split(".")[0] in BARE:
                out.append(name)
    return out


@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_recipe_script_and_module_entry_point_use_ie_engine_only(where, tmp_path):
    cwd = REPO if where == "repo_root" else tmp_path
    # a recipe run as a script, stopped by a config error once everything is imported
    proc = _run([sys.executable, "-X", "importtime", str(REPO / "recipes" / "sft.py"), "no_such_key=1"], cwd)
    assert proc.returncode == 2 and "no_such_key" in proc.stderr, proc.stderr[-3000:]
    assert _bare_imports(proc.stderr) == []
    assert "ie_engine.engine.train.fit" in proc.stderr
    # a `python -m` entry point
    proc = _run([sys.executable, "-X", "importtime", "-m", "ie_engine.data.prepare", "--help"], cwd)
    assert proc.returncode == 0 and "usage: python -m ie_engine.data.prepare" in proc.stdout, proc.stderr[-3000:]
    assert _bare_imports(proc.stderr) == []
