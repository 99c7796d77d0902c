"""The run's workdir: the checks before a run starts, the records it keeps, and resuming.

Files (written by process 0 only, each atomically):
``config.json``        the resolved config of the newest invocation (judge and export rebuild
                       the model from the chosen checkpoint's own copy of it);
``invocations.jsonl``  one line per invocation that trained: the step it started at, its
                       config and any run-defining keys ``force`` let it change, so a forced
                       change is on record instead of silently rewriting the run's history;
``tokenizer/``         the tokenizer (``AutoTokenizer.from_pretrained`` loads it);
``metrics.jsonl``      the event log (``checkpoint.metrics_log``).
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from typing import Any

from jdjudge import __version__
from jdjudge.checkpoint.manager import CHECKPOINT_DIR, RunCheckpoints
from jdjudge.checkpoint.metrics_log import read_metrics
from jdjudge.checkpoint.resume import run_defining_differences
from jdjudge.config.fields import ConfigError, to_dict
from jdjudge.config.schema import Config
from jdjudge.entry import UsageError
from jdjudge.outputs import atomic_dir, check_writable_dir, is_primary, write_text_atomic

CONFIG_FILE = "config.json"
INVOCATIONS_FILE = "invocations.jsonl"
METRICS_FILE = "metrics.jsonl"
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class Resumed:
    step: int
    state: Any
    damaged_steps: list[int]
    forced: list[str]  # run-defining keys that differ from the saved run (force was set)


def check_workdir(config: Config) -> None:
    """The workdir is a directory (or can become one) where this run can write."""
    workdir = config.workdir
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"workdir={workdir!r}: exists and is not a directory")
    checkpoints = os.path.join(workdir, CHECKPOINT_DIR)
    places = [workdir, checkpoints] if os.path.isdir(checkpoints) else [workdir]
    try:
        for path in places:
            check_writable_dir(path, f"workdir={workdir!r}")
    except UsageError as error:
        raise ConfigError(f"{error}; choose a writable --config.workdir") from None


def resume(config: Config, abstract_state: Any, fingerprint: str) -> Resumed | None:
    """The newest usable checkpoint of the workdir, after checking it belongs to this run.
    Reads only; raises ConfigError when the workdir holds a different run (unless forced)."""
    if not os.path.isdir(os.path.join(config.workdir, CHECKPOINT_DIR)):
        return None
    with RunCheckpoints(config.workdir, read_only=True) as checkpoints:
        steps = checkpoints.steps()
        if not steps:
            return None
        saved = checkpoints.newest_metadata()
        differences = run_defining_differences(saved.get("config", {}), to_dict(config))
        if saved.get("data_fingerprint") != fingerprint:
            differences.append("data fingerprint (the items or their tokenization changed)")
        if differences and not config.force:
            raise ConfigError(
                f"workdir {config.workdir} holds a different run: {'; '.join(differences)}; "
                "use another workdir or --config.force=true"
            )
        restored = checkpoints.restore_newest(abstract_state)
    if restored is None:
        raise ConfigError(
            f"workdir {config.workdir} has checkpoints {steps} but none restores; "
            "use another workdir"
        )
    step, state, damaged = restored
    return Resumed(step=step, state=state, damaged_steps=damaged, forced=differences)


def check_forced_change(config: Config, resumed: Resumed | None, total_steps: int) -> None:
    """``force`` may continue a run under changed keys, but not relabel a finished one: with
    no step left to train, only ``config.json`` would change, and it would then lie."""
    if resumed is None or not resumed.forced or resumed.step < total_steps:
        return
    raise ConfigError(
        f"workdir {config.workdir} is finished (step {resumed.step} of {total_steps}): no step "
        f"would train under the changed keys ({'; '.join(resumed.forced)}); raise "
        "--config.steps to continue under them, or use another workdir"
    )


def record_start(
    config: Config, tokenizer: Any, start_step: int, total_steps: int, forced: list[str]
) -> None:
    """Write config.json and tokenizer/, and append this invocation to invocations.jsonl."""
    if not is_primary():
        return
    workdir = config.workdir
    os.makedirs(workdir, exist_ok=True)
    resolved = to_dict(config)
    write_text_atomic(os.path.join(workdir, CONFIG_FILE), json.dumps(resolved, indent=2) + "\n")
    with atomic_dir(os.path.join(workdir, TOKENIZER_DIR)) as tmp:
        tokenizer.save_pretrained(tmp)
    invocation = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "version": __version__,
        "start_step": start_step,
        "steps": total_steps,
        "forced_changes": forced,
        "config": resolved,
    }
    with open(os.path.join(workdir, INVOCATIONS_FILE), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(invocation) + "\n")


def initial_eval(workdir: str) -> dict[str, Any] | None:
    """The run's step-0 validation event, for the summary of a resumed invocation."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return None
    return next((e for e in read_metrics(path) if e["step"] == 0 and e["split"] == "eval"), None)
