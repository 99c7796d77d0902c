"""Which checkpoints a run keeps: the newest ``keep`` steps and the best one by eval KL.

Pure functions of a {step: eval KL or None} record, so the choice is the same however many
times the run was resumed: the record is rebuilt from the checkpoints themselves (each one
stores the eval KL of its step), never from the memory of one process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

CHOICES = ("best", "latest")


def best_step(eval_kl: Mapping[int, float | None]) -> int | None:
    """The step with the lowest finite eval KL (the earliest among equals); None when no
    step was evaluated."""
    scored = [(kl, step) for step, kl in eval_kl.items() if kl is not None and math.isfinite(kl)]
    return min(scored)[1] if scored else None


def steps_to_keep(eval_kl: Mapping[int, float | None], keep: int, keep_best: bool) -> set[int]:
    """The newest ``keep`` steps, plus the best step when ``keep_best``."""
    kept = set(sorted(eval_kl, reverse=True)[:keep])
    best = best_step(eval_kl) if keep_best else None
    return kept if best is None else kept | {best}


def choose_step(eval_kl: Mapping[int, float | None], which: str) -> tuple[int, str]:
    """The step ``which`` names (``best``, ``latest`` or a step number) and a phrase saying
    why it was chosen; ValueError naming the steps there are when none matches."""
    if not eval_kl:
        raise ValueError("there are no checkpoints")
    steps = sorted(eval_kl)
    if which == "latest":
        return steps[-1], "the latest"
    if which == "best":
        best = best_step(eval_kl)
        if best is None:
            return steps[-1], "the latest (no checkpoint has an eval KL to rank it)"
        return best, f"the best, eval KL {eval_kl[best]:.4f}"
    if not which.isdigit():
        raise ValueError(f"expected best, latest or a step number, got {which!r}")
    if int(which) not in eval_kl:
        raise ValueError(f"no checkpoint at step {which}; there are {steps}")
    return int(which), "as asked"
