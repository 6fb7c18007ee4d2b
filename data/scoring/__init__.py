"""IE scorers: text in, numbers out, reproducing the numbers ADELIE's evaluation scripts print.

One module per task (ner, relation, temporal, event, ondemand, openie); each module's
docstring lists the rules and the quirks of ADELIE's script it reproduces, and the `*_corrected`
keys it reports beside them where a quirk is a bug. This file maps dataset names to tasks and
gives one entry point for all of them. Every result has "task", "precision", "recall", "f1"
(fractions in [0, 1]; on-demand IE puts its ROUGE-Lsum/100 in f1) and "n" (records).

    score_file("pred/semeval.jsonl")                      # task from the records' dataset name
    score_files(paths, sim_model="/models/all-MiniLM-L6-v2")
    python -m ie_engine.data.scoring pred/*.jsonl --out metrics.json
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from .predictions import RecordError, at_line, dataset_of, read_predictions_with_lines

# task -> (module, function); imported on use, so NER scoring never loads rouge-score.
SCORERS = {
    "ner": ("ner", "score"),
    "relation": ("relation", "score"),
    "temporal": ("temporal", "score"),
    "ed": ("event", "score_ed"),
    "eae": ("event", "score_eae"),
    "ondemand": ("ondemand", "score"),
    "openie": ("openie", "score"),
    "generic": ("generic", "score"),
}
# scoring option -> the task that takes it; other tasks ignore it.
OPTIONS = {"sim_model": "ondemand", "gold": "openie"}
# dataset name (lower-case) -> task; ADELIE's test files name their source in `datasets`.
DATASETS = {
    "few-nerd-supervised": "ner", "fewnerd": "ner", "few-nerd": "ner",
    "semeval": "relation",
    "matres": "temporal",
    "richere-ed": "ed",
    "richere-eae": "eae",
    "ondemand": "ondemand",
    "robust": "openie",
    "bundled-ner": "generic", "bundled-re": "generic", "bundled-ed": "generic",
}


def task_for(dataset_name: str) -> str:
    """The task scoring a dataset (case-insensitive); a task name maps to itself."""
    key = dataset_name.strip().lower()
    if key in SCORERS:
        return key
    if key not in DATASETS:
        raise ValueError(f"no scorer for dataset {dataset_name!r}; known datasets: "
                         f"{', '.join(sorted(DATASETS))}; tasks: {', '.join(SCORERS)}")
    return DATASETS[key]


def _task_of_records(records: list[dict]) -> str:
    tasks = set()
    for index, record in enumerate(records):
        name = dataset_of(record)
        if name is None:
            raise RecordError(index, "no 'datasets' / 'dataset' name to choose a scorer; pass task=")
        try:
            tasks.add(task_for(name))
        except ValueError as e:
            raise RecordError(index, str(e)) from None
    if len(tasks) != 1:
        raise ValueError(f"records need one scorer, found {sorted(tasks) or 'none (no records)'}; pass task=")
    return tasks.pop()


def score_records(records: list[dict], task: str | None = None, **options) -> dict:
    """Score prediction records. Options go to the scorers that take them (ondemand: sim_model;
    openie: gold) and are ignored by the others; an option no scorer takes is an error."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown scoring option(s) {sorted(unknown)}; known: {sorted(OPTIONS)}")
    task = task_for(task) if task else _task_of_records(records)
    module, name = SCORERS[task]
    scorer = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    return scorer(records, **{k: v for k, v in options.items() if OPTIONS[k] == task and v is not None})


def score_file(path: str | os.PathLike, task: str | None = None, **options) -> dict:
    records, lines = read_predictions_with_lines(path)
    try:
        return score_records(records, task, **options)
    except RecordError as e:
        raise at_line(path, lines, e) from None


def score_files(paths, task: str | None = None, **options) -> dict[str, dict]:
    """{file name without .jsonl: metrics}; names shared by several files (zeroshot/semeval.jsonl,
    fewshot/semeval.jsonl) keep their parent folder ("zeroshot/semeval"). A file that mixes
    datasets (the bundled held-out set) also gets one row per dataset, "<name>:<dataset>", and its
    own row only when one scorer serves them all."""
    paths = [Path(p) for p in paths]
    stems = [p.name.removesuffix(".jsonl") for p in paths]
    names = [f"{p.parent.name}/{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]
    out: dict[str, dict] = {}
    for name, path in zip(names, paths):
        records, lines = read_predictions_with_lines(path)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            groups.setdefault(dataset_of(r) or "", []).append(i)
        if task is None and len(groups) > 1:
            for dataset, idx in sorted(groups.items()):
                try:
                    out[f"{name}:{dataset}"] = score_records([records[i] for i in idx], None, **options)
                except RecordError as e:
                    raise at_line(path, [lines[i] for i in idx], e) from None
            if len({task_for(d) for d in groups if d}) != 1:
                continue
        try:
            out[name] = score_records(records, task, **options)
        except RecordError as e:
            raise at_line(path, lines, e) from None
    return out


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _other(m: dict) -> str:
    """The task's extra headline numbers, already in percent or turned into percent."""
    parts = []
    if m.get("task") == "ondemand":
        parts.append(f"content ROUGE-Lsum {m['content_rougeLsum']:.2f}")
        for key, label in (("header_sim_f1", "header sim F1"), ("header_exact_f1", "header exact-match F1")):
            if key in m:
                parts.append(f"{label} {m[key]:.2f}")
    if m.get("task") == "temporal":
        parts.append("F1 " + ", ".join(f"{k} {_pct(v['f1'])}" for k, v in m["per_class"].items()))
    if m.get("task") == "openie":
        parts.append(f"AUC {_pct(m['auc'])}; robust P/R/F1 {_pct(m['robust_precision'])}/"
                     f"{_pct(m['robust_recall'])}/{_pct(m['robust_f1'])}")
    return "; ".join(parts)


def format_markdown(metrics: dict) -> str:
    """A markdown table in percent (as the paper shows): one row per file. Takes score_files'
    {name: metrics} or one metrics dict."""
    table = {"": metrics} if "task" in metrics else metrics
    lines = ["| file | task | n | P | R | F1 | F1 (corrected) | other |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, m in table.items():
        lines.append(f"| {name} | {m['task']} | {m['n']} | {_pct(m['precision'])} | {_pct(m['recall'])} "
                     f"| {_pct(m['f1'])} | {_pct(m.get('f1_corrected'))} | {_other(m)} |")
    return "\n".join(lines) + "\n"
