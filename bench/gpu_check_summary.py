"""The GPU check's key numbers: one summary per stage, from the rows its benchmark appended and
its output, and the table they make (bench/gpu_check.py runs the stages).

Each summary returns (key numbers, verdict): verdict True (target met), False (missed), or None:
no target, or a target that cannot be judged here (a dry run; a baseline that could not run on
this machine: "n/a", never a miss).
"""
from __future__ import annotations

import re

from ie_engine.bench.common import DPO_VS_TRL_TARGET, MFU_TARGET

HEAD_PEAK_TARGET, HEAD_MEM_TARGET = 60.0, 0.20  # fused head: % of the measured bf16 peak; x eager's extra memory
COMPACT_CHARS = 240  # key numbers per row in the printed table (the log file and gpu_check.md keep all)


def _pick(rows: list[dict], **want) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def _ratio(a, b) -> float | None:
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def summarize_pytest(rows: list[dict], output: str, on_gpu: bool) -> tuple[str, bool | None]:
    """pytest's last line, e.g. '12 passed, 3 skipped in 40.1s' -> '12 passed, 3 skipped'."""
    lines = [l for l in output.splitlines() if re.search(r"\b(passed|failed|skipped|error|deselected|no tests)\b", l)]
    if not lines:
        return "no pytest summary line", None
    counts = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", lines[-1])
    text = ", ".join(f"{n} {what}" for n, what in counts) or lines[-1].strip("= ")
    failed = [t.split("/")[-1] for t in re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)]
    if failed:
        text += "; " + ", ".join(failed[:4]) + (f" and {len(failed) - 4} more" if len(failed) > 4 else "")
    return text, None


def summarize_fused_head(rows: list[dict], output: str, on_gpu: bool) -> tuple[str, bool | None]:
    r = _pick(rows, case="fused_logprob", mode="fwd+bwd")
    if r is None:
        return "no fused_logprob fwd+bwd row", None
    ce = _pick(rows, case="fused_ce", mode="fwd+bwd") or {}
    mem = r.get("mem_vs_eager")
    shape = f"N={r.get('N')} H={r.get('H')} V={r.get('V')} {r.get('dtype')}"
    mem_s = f"extra mem {100 * mem:.1f}% of eager" if mem is not None else "no eager row"
    if ce.get("mem_vs_eager") is not None:
        mem_s += f" (CE {100 * ce['mem_vs_eager']:.1f}%)"
    if not on_gpu:
        return f"{shape} fwd+bwd {r['ms']:.2f} ms (CPU reference path), {mem_s}", None
    pct = r.get("pct_peak_model")
    text = (f"{shape} fwd+bwd {r['ms']:.2f} ms, {r.get('model_TFLOPs', 0):.0f} TFLOP/s = {pct:.1f}% of bf16 peak "
            f"({r.get('pct_peak_executed', 0):.1f}% executed; peak {r.get('peak_bf16_TFLOPs', 0):.0f}), {mem_s}")
    if r.get("time_vs_eager") is not None:
        text += f", {1 / r['time_vs_eager']:.2f}x eager speed"
    met = pct is not None and mem is not None and pct >= HEAD_PEAK_TARGET and mem <= HEAD_MEM_TARGET
    return text, met


def summarize_train_step(rows: list[dict], output: str, on_gpu: bool) -> tuple[str, bool | None]:
    """Both MFUs (the recipes' FSDP2 bf16-mixed step, which the target is for, and the plain
    pure-bf16 one), packed vs padded, DPO vs each TRL baseline; a baseline that could not run
    is 'n/a (why)' and leaves the verdict to the rest."""
    s = _pick(rows, task="summary")
    plain = _pick(rows, case="ours_fused_packed")
    if s is None or plain is None:
        return "no train_step summary / ours_fused_packed row", None
    fsdp = _pick(rows, case="ours_fsdp_packed")
    not_run = s.get("not_run") or {}
    mfu = f"MFU {100 * fsdp['mfu']:.1f}% ({fsdp.get('precision')}), " if fsdp else "MFU n/a (fsdp2), "
    parts = [f"{s.get('preset')}: SFT {plain['tokens_per_s']:.0f} tok/s, {mfu}{100 * plain['mfu']:.1f}% "
             f"({plain.get('precision')}), step peak +{plain['extra_peak_MiB'] / 1024:.2f} GiB over "
             f"{plain['state_MiB'] / 1024:.2f} GiB weights+AdamW"]
    packed = s.get("sft_packed_vs_padded_tok_s")
    if packed is not None:
        parts.append(f"packed/padded {packed:.2f}x tok/s")
    if s.get("sft_ours_vs_hf_tok_s") is not None:
        parts.append(f"vs HF {s['sft_ours_vs_hf_tok_s']:.2f}x")
    elif "hf_padded" in not_run:
        parts.append(f"vs HF n/a ({not_run['hf_padded']})")
    trl = {}
    dpo = _pick(rows, case="ours_dpo_packed")
    if dpo is not None:
        shown = []
        for k in ("logits", "fused"):
            v = s.get(f"dpo_ours_vs_trl_{k}_tok_s")
            if v is not None:
                trl[k] = v
                shown.append(f"{v:.2f}x ({k})")
            elif f"trl_{k}_padded" in not_run:
                shown.append(f"n/a ({k}: {not_run[f'trl_{k}_padded']})")
        parts.append(f"DPO {dpo['tokens_per_s']:.0f} tok/s; vs TRL " + ", ".join(shown or ["no TRL case"]))
    if s.get("agree") is False:
        parts.append("CASES DISAGREE on loss/grad norm")
    if not on_gpu:
        return "; ".join(parts), None
    checks = ([fsdp["mfu"] >= MFU_TARGET] if fsdp else []) + [v >= DPO_VS_TRL_TARGET for v in trl.values()]
    return "; ".join(parts), (all(checks) if checks else None)


def summarize_vs_compile(kernel_key: str, fast_impls: tuple[str, ...], mode_key: str):
    """Kernels vs torch.compile of their reference at fwd+bwd: compiled ms / our ms per shape
    (> 1: faster than compile), and the peak-memory ratio. On CPU there is no Triton, so the
    eager reference stands in (the numbers then describe compile, not our kernels)."""

    def summarize(rows: list[dict], output: str, on_gpu: bool) -> tuple[str, bool | None]:
        rows = [r for r in rows if r.get(mode_key) == "fwd+bwd"]
        impl = next((i for i in fast_impls if any(r.get("impl") == i for r in rows)), None)
        if impl is None:
            return "no fwd+bwd rows", None
        parts, met = [], True
        for r in (r for r in rows if r.get("impl") == impl):
            label = r.get(kernel_key) if kernel_key != "B" else f"B={r['B']}"
            if "loss_type" in r:
                label = f"{r['loss_type']} {label}"
            c = next((c for c in rows if c.get("impl", "").startswith("compiled") and
                      all(c.get(k) == r.get(k) for k in (kernel_key, "loss_type", "shape", "B") if k in r)), None)
            if c is None:
                continue
            speed = _ratio(c["ms"], r["ms"])
            mem_key = "peak_MiB" if "peak_MiB" in r else "peak_mem_MiB"
            mem = _ratio(r.get(mem_key), c.get(mem_key))
            parts.append(f"{label} {speed:.2f}x" + (f"/mem {mem:.2f}x" if mem is not None else ""))
            met = met and (speed >= 1.0 or (mem is not None and mem <= 1.0))
        text = f"{impl} vs torch.compile (fwd+bwd speed/mem): " + ", ".join(parts)
        return text, (met if on_gpu and parts else None)

    return summarize


def summarize_generate(rows: list[dict], output: str, on_gpu: bool) -> tuple[str, bool | None]:
    """Per preset and batch: ours vs transformers tokens/s, our decode rate and its roofline share."""
    parts = []
    for r in (r for r in rows if r.get("case") == "ours"):
        s = _pick(rows, case="summary", preset=r["preset"], batch=r["batch"]) or {}
        text = f"{r['preset']} b{r['batch']}: {r['tokens_per_s']:.0f} tok/s"
        if s.get("speedup") is not None:
            text += f" ({s['speedup']:.2f}x HF)"
        text += f", decode {r['decode_tokens_per_s']:.0f} tok/s = {r['roofline_pct']:.0f}% {r['roofline']}"
        parts.append(text)
    return ("; ".join(parts) if parts else "no result rows"), None


def verdict(target: str, met: bool | None) -> str:
    if target == "-":
        return ""
    return {True: "met", False: "MISSED", None: "n/a"}[met]


def table_rows(outcomes: list, compact: bool) -> list[dict]:
    rows = []
    for o in outcomes:
        numbers = o.numbers
        if compact and len(numbers) > COMPACT_CHARS:
            numbers = numbers[:COMPACT_CHARS - 3] + "..."
        rows.append({"stage": o.stage, "status": o.status, "s": f"{o.seconds:.0f}", "verdict": o.verdict(),
                     "target": o.target, "key numbers": numbers})
    return rows


def markdown(head: str, outcomes: list) -> str:
    rows = table_rows(outcomes, compact=False)
    out = [f"\n## {head}\n", "| " + " | ".join(rows[0]) + " |" if rows else "", "|---" * 6 + "|"]
    out += ["| " + " | ".join(str(v).replace("|", "/") for v in r.values()) + " |" for r in rows]
    return "\n".join(out) + "\n"


def summarize_rows(rows: list[dict], output: str, on_gpu: bool) -> tuple[str, bool | None]:
    """A benchmark with no target here (its own rows carry the numbers): how many it wrote."""
    return f"{len(rows)} rows", None
