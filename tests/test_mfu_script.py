"""benchmarks/mfu.py is run only when an accelerator is lent; its --tiny mode keeps it runnable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mfu.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip


def test_tiny_mode_times_both_modes_and_reports_the_formula_flops():
    done = run("--tiny")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if "mfu=" in line]
    assert [line.split(":")[0] for line in lines] == ["full fine-tuning", "LoRA r16"]
    for line in lines:
        model, xla = map(float, re.search(r"model ([\d.]+) GFLOP \(XLA ([\d.]+)\)", line).groups())
        assert 0.8 < model / xla < 1.25  # the formula against XLA's count of the same step
        assert line.endswith("mfu=n/a")  # CPU: no peak, so no MFU claimed


def test_without_a_known_peak_the_full_shape_is_refused():
    done = run("--steps", "1")
    assert done.returncode != 0 and "no known peak FLOP/s" in done.stderr
