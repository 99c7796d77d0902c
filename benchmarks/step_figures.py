"""Measurement helpers of ``benchmarks/step_time.py``: peak RSS, load average and the
per-side figures (median, IQR, real tokens/s) and the adversarial overhead lines it prints."""

from __future__ import annotations

import os
import re
import resource
from pathlib import Path
from typing import Any

import numpy as np


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> float | None:
    """Restart the peak at the current RSS (Linux clear_refs 5); returns the RSS then, or None
    where the kernel does not allow it (then only the whole-process peak is reported)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return peak_rss_mib()
    except OSError:
        return None


def load_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {when}: {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"


def stats(side: dict, meta: dict) -> dict[str, float]:
    timed = np.array(meta["timed"])
    times = np.array(side["times"])[timed]
    real = np.array(meta["real_tokens"])[timed]
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return {"median_ms": med * 1e3, "iqr_ms": (q3 - q1) * 1e3, "min_ms": times.min() * 1e3,
            "max_ms": times.max() * 1e3, "tok_s": real.sum() / times.sum(),
            "steps": int(timed.sum())}  # fmt: skip


def side_line(name: str, s: dict, side: dict, extra: str) -> str:
    rss = side["peak_rss_mib"]
    base = side.get("baseline_rss_mib")
    rss_text = f"{rss:7.0f}" + (f" (from {base:.0f})" if base is not None else "")
    return (f"  {name:8} {s['median_ms']:9.1f} {s['iqr_ms']:8.1f} {s['min_ms']:8.1f}-"
            f"{s['max_ms']:<8.1f} {s['tok_s']:9.0f}  {rss_text:20} {extra}")  # fmt: skip


def adversarial_lines(adv: dict[str, Any], meta: dict, result: dict[str, Any]) -> str:
    """The interleaved ε = 0 / ε > 0 timings; records each solver's paired overhead."""
    lines = [f"adversarial (eps {adv['epsilon']}, {adv['steps']} solver steps), interleaved "
             "with eps=0 in one process on the same batches:"]  # fmt: skip
    base = {"times": adv["eps0"]["times"], "peak_rss_mib": adv["peak_rss_mib"]}
    lines.append(side_line("eps 0", stats(base, meta), base, "the same process"))
    for solver in ("pgd", "worst_case"):
        figures = adv[solver]
        side = {"times": figures["times"], "peak_rss_mib": adv["peak_rss_mib"]}
        result["adversarial"][solver] = figures["paired_median"]
        q1, q3 = figures["paired_iqr"]
        note = (
            f"overhead {figures['paired_median']:.3f}x (paired, IQR {q1:.3f}-{q3:.3f}; "
            f"medians {figures['median_ratio']:.3f}x); compiled FLOPs "
            f"{figures['extra_kflop']:+.1f} kFLOP ({figures['flops_ratio']:.6f}x)"
        )
        label = {"pgd": "eps pgd", "worst_case": "eps wc"}[solver]
        lines.append(side_line(label, stats(side, meta), side, note))
    return "\n".join(lines)
