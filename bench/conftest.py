"""`pytest bench/ --benchmark-only`: after the run, every benchmark's timing is appended to
bench/results/pytest_benchmark.jsonl with the date, git sha, device and versions (through
bench/common.py), like the `python -m ie_engine.bench.<suite>` runs."""



def pytest_sessionfinish(session, exitstatus):
    bs = getattr(session.config, "_benchmarksession", None)
    benches = [b for b in (getattr(bs, "benchmarks", None) or []) if b and not b.has_error]
    if not benches:
        return
    from ie_engine.bench.common import append_results
    rows = []
    for b in benches:
        s = b.stats
        rows.append({"group": b.group or "", "name": b.name, "median_ms": 1e3 * s.median,
                     "min_ms": 1e3 * s.min, "iqr_ms": 1e3 * s.iqr, "rounds": s.rounds, **(b.extra_info or {})})
    append_results("pytest_benchmark", rows)
