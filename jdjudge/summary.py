"""The training CLI's closing line: what this invocation did, then the run's figures."""

from __future__ import annotations

from typing import Any


def format_summary(prog: str, summary: dict[str, Any]) -> str:
    """One line: what this invocation did, then the run's figures (initial KL from step 0
    even after a resume)."""
    steps, start = summary["steps"], summary["start_step"]
    if summary["stopped_by"]:
        where = (f"checkpoint saved in {summary['checkpoint']}; rerun the same command to resume"
                 if steps > start else "no step ran, so no new checkpoint; rerun the same "
                 "command to continue")  # fmt: skip
        return f"{prog}: stopped by {summary['stopped_by']} at step {steps}; {where}"
    ran = f"{steps - start} steps in {summary['seconds']}s"
    if summary["resumed"]:
        ran = f"resumed at step {start}, {ran} (step {steps} of {summary['total_steps']})"
    parts = [f"{prog}: {ran}"]
    final = summary["eval_kl_final"]
    if final is not None:
        initial = summary["eval_kl_initial"]
        begin = f"{initial:.4f} -> " if initial is not None else ""
        truth = summary["eval_kl_truth_final"]
        parts.append(
            f"eval KL {begin}{final:.4f}"
            + (f", KL to truth {truth:.4f}" if truth is not None else "")
            + f", accuracy {summary['eval_accuracy_final']:.3f}"
        )
    if summary["test_kl"] is not None:
        parts.append(f"test KL {summary['test_kl']:.4f}")
    if summary["skipped_steps"]:
        parts.append(f"{summary['skipped_steps']} non-finite steps skipped")
    if summary["best_step"] is not None:
        parts.append(f"best step {summary['best_step']} (eval KL {summary['best_eval_kl']:.4f})")
    parts.append(f"checkpoints {summary['checkpoint']}")
    return "; ".join(parts)
