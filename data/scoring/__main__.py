"""Command line: score prediction files and write metrics.json plus metrics.md beside it.

    python -m ie_engine.data.scoring PRED.jsonl [PRED.jsonl ...] [--out metrics.json] [--task T]
                           [--sim-model DIR] [--gold ROBUST.json]

Prints the markdown table. A bad input prints only "FILE:LINE: problem" (or the file's
problem) to stderr and exits 2, without a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import SCORERS, format_markdown, score_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ie_engine.data.scoring", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="prediction JSONL files (test record + 'output')")
    parser.add_argument("--out", help="metrics JSON to write; metrics.md goes beside it")
    parser.add_argument("--task", help=f"force a task ({', '.join(SCORERS)}) or a dataset name; "
                                       "default: from each record's dataset name")
    parser.add_argument("--sim-model", help="local all-MiniLM-L6-v2 directory for the on-demand "
                                            "header similarity (else exact-match header F1)")
    parser.add_argument("--gold", help="ROBUST gold JSON (Open IE), from the ROBUST authors")
    args = parser.parse_args(argv)
    try:
        metrics = score_files(args.paths, args.task, sim_model=args.sim_model, gold=args.gold)
    except (ValueError, OSError, ImportError) as e:
        print(e, file=sys.stderr)
        return 2
    table = format_markdown(metrics)
    print(table, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2) + "\n")
        out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
