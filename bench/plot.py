"""Chart the latest run of every benchmark suite in bench/results/*.jsonl into one PNG.

    python -m ie_engine.bench.plot [--out bench/results/latest.png]

The latest run of a suite is the rows sharing the last row's run_id (bench_train_step stamps one
per invocation; there, the last run of each preset) or, for suites without one, the last row's
date (one append_results call).
train_step gets two panels per preset: real tokens/s per case, with MFU on each bar, and the
step's extra peak memory; every other suite gets one panel of its time metric per row, labelled
by the fields that differ between the rows. Each panel's title names the device and git sha.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ie_engine.bench.common import RESULTS_DIR

META = {"date", "git_sha", "device", "torch", "triton", "suite", "run_id"}
TIME_KEYS = ("ms", "seconds", "wall_s", "cpu_s")  # the first one a suite has is its panel's metric
IMPL_COLORS = {"ours": "tab:blue", "transformers": "tab:orange", "trl": "tab:red"}


def latest_run(rows: list[dict]) -> list[dict]:
    """The last run's rows; with a "preset" field, the last run of each preset."""
    key = "run_id" if "run_id" in rows[-1] else "date"
    last = {r.get("preset"): r.get(key) for r in rows}
    return [r for r in rows if r.get(key) == last[r.get("preset")]]


def load(results_dir: Path) -> dict[str, list[dict]]:
    suites = {}
    for path in sorted(results_dir.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            suites[path.stem] = latest_run(rows)
    return suites


def _title(rows: list[dict], what: str) -> str:
    r = rows[0]
    return f"{what}\n{r.get('device', '?')}, git {r.get('git_sha', '?')}, {r.get('date', '?')[:16]}"


def _train_step_panels(rows: list[dict]) -> list[tuple]:
    """(title, labels, values, colors, xlabel, notes) per panel: tokens/s and memory per preset."""
    panels = []
    cases = [r for r in rows if r.get("case") != "summary"]
    for preset in dict.fromkeys(r["preset"] for r in cases):
        sel = [r for r in cases if r["preset"] == preset]
        labels = [f"{r['task']}: {r['case']}" for r in sel]
        colors = [IMPL_COLORS.get(r["impl"], "gray") for r in sel]
        dtype = sel[0]["dtype"]
        panels.append((_title(sel, f"train_step {preset} ({dtype}): real tokens/s (label: MFU)"), labels,
                       [r["tokens_per_s"] for r in sel], colors, "real (non-pad) tokens / s",
                       [f"{100 * r['mfu']:.0f}%" for r in sel]))
        panels.append((_title(sel, f"train_step {preset}: extra peak memory of one step"), labels,
                       [r["extra_peak_MiB"] for r in sel], colors, "MiB",
                       [f"pad {100 * r['pad_fraction']:.0f}%" for r in sel]))
    return panels


def _generic_panel(suite: str, rows: list[dict]) -> tuple | None:
    metric = next((k for k in TIME_KEYS if any(isinstance(r.get(k), (int, float)) for r in rows)), None)
    if metric is None:
        return None
    rows = [r for r in rows if isinstance(r.get(metric), (int, float))]
    varying = [k for k in dict.fromkeys(k for r in rows for k in r)
               if k not in META and isinstance(rows[0].get(k), str) and len({r.get(k) for r in rows}) > 1]
    labels = [" ".join(str(r.get(k, "")) for k in varying) or suite for r in rows]
    return (_title(rows, f"{suite}: {metric}"), labels, [r[metric] for r in rows], ["tab:gray"] * len(rows),
            metric, [""] * len(rows))


def plot(suites: dict[str, list[dict]], out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if "train_step" in suites:
        panels += _train_step_panels(suites["train_step"])
    for suite, rows in suites.items():
        if suite != "train_step":
            panel = _generic_panel(suite, rows)
            if panel is not None:
                panels.append(panel)
    if not panels:
        raise SystemExit(f"no results to plot in {RESULTS_DIR}")
    heights = [1.2 + 0.28 * len(p[1]) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (title, labels, values, colors, xlabel, notes) in zip(axes[:, 0], panels):
        y = range(len(labels))
        bars = ax.barh(y, values, color=colors)
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_xlabel(xlabel, fontsize=8)
        if xlabel in TIME_KEYS and max(values) / max(min(values), 1e-12) > 50:
            ax.set_xscale("log")
        for bar, note in zip(bars, notes):
            if note:
                ax.annotate(note, (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(3, 0),
                            textcoords="offset points", va="center", fontsize=7)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.12)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS_DIR)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.png")
    args = ap.parse_args()
    print(f"wrote {plot(load(args.results), args.out)}")


if __name__ == "__main__":
    main()
