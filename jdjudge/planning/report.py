"""The plan's report as the lines ``python -m jdjudge.plan`` prints: a pure function of the
report dict (the same numbers ``--output`` writes as JSON)."""

from __future__ import annotations

from typing import Any

from jdjudge.planning.memory import MEMORY_FIELDS, gib, size

PROG = "jdjudge.plan"


def format_report(report: dict[str, Any]) -> str:
    """The report as the lines ``python -m jdjudge.plan`` prints."""
    mem, model, batch = report["memory_per_device"], report["model"], report["batch"]
    mesh = " × ".join(f"{axis} {n}" for axis, n in report["mesh"].items())
    slices = f", {report['num_slices']} slices" if report["num_slices"] > 1 else ""
    lines = [f"{PROG}: {report['topology']}{slices}: {report['devices']} × "
             f"{report['device_kind']} ({report['hosts']} host(s))"]  # fmt: skip
    if report["compiled_for"] == "cpu":
        lines.append("  NOTE: compiled for simulated CPU devices (libtpu not installed or "
                     "cpu:N asked): XLA:CPU's figures, not a TPU's")  # fmt: skip
    lines += [
        f"  mesh: {mesh}",
        f"  model: {model['parameters']:,} parameters, {model['trainable']:,} trainable "
        f"(lora rank {model['lora_rank']}, params {model['param_dtype']}, remat "
        f"{model['remat']}, attention {model['attention']}); {model['architecture']}",
        f"  batch: {batch['layout']}, {batch['rows']} rows × {batch['width']} tokens = "
        f"{batch['tokens']:,} tokens per step; K = {batch['labels']} labels "
        f"({batch['labels_from']})",
    ]
    if report["xla_out_of_memory"]:
        lines.append(f"  per device: XLA refused the program: it needs {gib(mem['total'])}, "
                     f"more than the {gib(report['hbm_usable'])} a program may use")  # fmt: skip
    else:
        lines.append("  per device:")
        lines += [
            f"    {name.replace('_', ' '):<15}{size(mem[name]):>12}" for name in MEMORY_FIELDS
        ]
    hbm, usable = report["hbm_per_device"], report["hbm_usable"]
    usable_note = f" ({gib(usable)} usable by a program, per XLA)" if usable else ""
    lines.append(f"  HBM per device: {'unknown' if hbm is None else gib(hbm)}{usable_note}")
    lines.append(f"  {report['verdict']}")
    if report.get("model_flops") is not None:
        lines.append(
            f"  model FLOPs per step: {report['model_flops']:.4g} (jdjudge.training.flops)"
        )
    if report["flops_per_device"] is not None:
        lines.append(f"  XLA cost analysis: {report['flops_per_device']:.4g} FLOPs per device, "
                     f"{report['flops_global']:.4g} in all (a scanned layer counted once, "
                     "Pallas kernels not at all)")  # fmt: skip
    lines.append(f"  compile time: {report['compile_seconds']} s")
    return "\n".join(lines)
