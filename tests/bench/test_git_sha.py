"""Benchmark rows name the measured code: '-dirty' for a changed tracked file, but not for rows
an earlier run appended under bench/results/ (a sweep appends one row per point, and its next
point's rows came out '-dirty' though no code had changed)."""
import subprocess

from ie_engine.bench.common import git_sha


def test_appended_results_do_not_make_the_tree_dirty(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "sweep.jsonl").write_text("{}\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_sha(tmp_path)
    assert clean != "unknown" and not clean.endswith("-dirty")
    with open(tmp_path / "bench" / "results" / "sweep.jsonl", "a") as f:
        f.write("{\"row\": 2}\n")
    assert git_sha(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_sha(tmp_path) == clean + "-dirty"
