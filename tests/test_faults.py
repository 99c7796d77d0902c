"""The fault matrix: every failure a user can cause, through the real CLIs in subprocesses.

Each case asserts the exit status, that the last stderr line is the documented message, that
no traceback appears, and that the run directory and the output's folder are unchanged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from jdjudge import train
from tests.cli_helpers import DEAD_HUB, cli_env, run_module, snapshot
from tests.conftest import PROJECT_ROOT

TINY = str(PROJECT_ROOT / "configs" / "tiny.py")
LLAMA = str(PROJECT_ROOT / "configs" / "llama.py")
HUB_ID = "meta-llama/Llama-3.1-8B-Instruct"
NOT_CACHED = "not a local directory nor in the Hugging Face cache"
OFFLINE_FIX = "download it where the Hub is reachable and"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 30-step run of the tiny default (checkpoints at 10, 20, 30)."""
    workdir = tmp_path_factory.mktemp("faults") / "run"
    argv = ["jdjudge.train", f"--config={TINY}", f"--config.workdir={workdir}",
            "--config.steps=30", "--config.eval_every=10", "--config.checkpoint_every=10"]  # fmt: skip
    assert train.main(argv) == 0
    return workdir


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in. Root ignores permission bits, so
    as root it is /sys (read-only in containers); the precondition is checked, not assumed."""
    if os.geteuid() == 0:
        place = Path("/sys")
    else:
        place = tmp_path / "read-only"
        place.mkdir()
        place.chmod(0o555)
    with pytest.raises(OSError):
        (place / "probe").write_text("x")
    return place


@dataclass(frozen=True)
class Ctx:
    tmp: Path
    run: Path  # a copy of the tiny run, which no case may change
    items: Path  # three good items for the run's labels
    locked: Path  # an unwritable directory

    def write(self, name: str, rows: list[dict]) -> Path:
        path = self.tmp / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path


@dataclass(frozen=True)
class Case:
    module: str
    args: Callable[[Ctx], list[str]]
    message: Callable[[Ctx], str]  # the last stderr line: exact, or a regex when it starts with ^
    env: dict[str, str] | None = None


def _item(labels: list[str], prompt: str = "Review: good\nVerdict:") -> dict:
    return {"id": "a", "prompt": prompt, "labels": labels}


def _judge(ctx: Ctx, *extra: str, model: str | None = None, output: str | None = None) -> list[str]:
    return [f"--model={model or ctx.run}", f"--input={ctx.items}",
            f"--output={output or ctx.tmp / 'out.jsonl'}", *extra]  # fmt: skip


def _judge_items(ctx: Ctx, rows: list[dict], *extra: str) -> list[str]:
    return [f"--model={ctx.run}", f"--input={ctx.write('bad.jsonl', rows)}",
            f"--output={ctx.tmp / 'out.jsonl'}", *extra]  # fmt: skip


CASES = {
    # --- train ---------------------------------------------------------------------------
    "train: bad config values": Case(
        "jdjudge.train",
        lambda c: [
            f"--config={TINY}",
            f"--config.workdir={c.tmp / 'new'}",
            "--config.steps=0",
            "--config.objective.alpha=1.5",
        ],
        lambda c: "jdjudge.train: error: steps=0: must be >= 1; objective.alpha=1.5: must be <= 1",
    ),
    "train: a workdir that is a file": Case(
        "jdjudge.train",
        lambda c: [f"--config={TINY}", f"--config.workdir={c.items}"],
        lambda c: f"jdjudge.train: error: workdir='{c.items}': exists and is not a directory",
    ),
    "train: a malformed record": Case(
        "jdjudge.train",
        lambda c: [
            f"--config={TINY}:jsonl",
            f"--config.workdir={c.tmp / 'new'}",
            f"--config.data.path={c.write('data.jsonl', _records_with_a_bad_one())}",
        ],
        lambda c: (
            f"jdjudge.train: error: data: {c.tmp / 'data.jsonl'}:34: field 'counts': "
            "negative count -2 for label 'no'"
        ),
    ),
    "train: unwritable workdir": Case(
        "jdjudge.train",
        lambda c: [f"--config={TINY}", f"--config.workdir={c.locked / 'run'}"],
        lambda c: (
            rf"^jdjudge.train: error: workdir='{re.escape(str(c.locked / 'run'))}': "
            rf"cannot write in '{re.escape(str(c.locked))}' \([^)]+\); choose a writable "
            r"--config.workdir$"
        ),
    ),
    "train: missing local model.init_from": Case(
        "jdjudge.train",
        lambda c: [
            f"--config={TINY}",
            f"--config.workdir={c.tmp / 'new'}",
            "--config.model.init_from=/nonexistent/llama",
        ],
        lambda c: "jdjudge.train: error: model.init_from='/nonexistent/llama': no such directory",
    ),
    "train: hub id with the Hub unreachable": Case(
        "jdjudge.train",
        lambda c: [f"--config={LLAMA}", f"--config.workdir={c.tmp / 'new'}"],
        lambda c: (
            f"jdjudge.train: error: model.init_from='{HUB_ID}': {NOT_CACHED}, and the "
            f"Hub ({DEAD_HUB}) is unreachable; {OFFLINE_FIX} set --config.model.init_from=<local dir>"
        ),
    ),
    "train: hub id with HF_HUB_OFFLINE=1": Case(
        "jdjudge.train",
        lambda c: [f"--config={LLAMA}", f"--config.workdir={c.tmp / 'new'}"],
        lambda c: (
            f"jdjudge.train: error: model.init_from='{HUB_ID}': {NOT_CACHED}, and the "
            f"Hub is disabled (HF_HUB_OFFLINE=1); {OFFLINE_FIX} set "
            "--config.model.init_from=<local dir>"
        ),
        env={"HF_HUB_OFFLINE": "1"},
    ),
    "train: force on a finished run": Case(
        "jdjudge.train",
        lambda c: [
            f"--config={TINY}",
            f"--config.workdir={c.run}",
            "--config.steps=30",
            "--config.objective.alpha=0",
            "--config.force=true",
        ],
        lambda c: (
            f"jdjudge.train: error: workdir {c.run} is finished (step 30 of 30): no step "
            "would train under the changed keys (objective.alpha (0.8 -> 0.0)); raise "
            "--config.steps to continue under them, or use another workdir"
        ),
    ),
    "train: a different run without force": Case(
        "jdjudge.train",
        lambda c: [
            f"--config={TINY}",
            f"--config.workdir={c.run}",
            "--config.steps=60",
            "--config.seed=1",
        ],
        lambda c: (
            f"jdjudge.train: error: workdir {c.run} holds a different run: seed (0 -> 1); "
            "use another workdir or --config.force=true"
        ),
    ),
    # --- judge ---------------------------------------------------------------------------
    "judge: a label of several tokens": Case(
        "jdjudge.judge",
        lambda c: _judge_items(c, [_item(["positive neutral", "negative"])]),
        lambda c: (
            f"jdjudge.judge: error: {c.tmp / 'bad.jsonl'}:1: field 'labels': verbalizer "
            "' positive neutral' of label 'positive neutral' is 2 tokens ('positive', 'neutral'), "
            "not one under the model's tokenizer; use label words that are one token each"
        ),
    ),
    "judge: a label with no token": Case(
        "jdjudge.judge",
        lambda c: _judge_items(c, [_item(["positive", "zyzzyva"])]),
        lambda c: (
            f"jdjudge.judge: error: {c.tmp / 'bad.jsonl'}:1: field 'labels': verbalizer "
            "' zyzzyva' of label 'zyzzyva' has no token under the model's tokenizer; use label "
            "words that are one token each"
        ),
    ),
    "judge: a prompt over --max_length": Case(  # <bos> + "Review" + ":" + 40 words = 43
        "jdjudge.judge",
        lambda c: _judge_items(
            c, [_item(["positive", "negative"], "Review:" + " good" * 40)], "--max_length=16"
        ),
        lambda c: (
            f"jdjudge.judge: error: {c.tmp / 'bad.jsonl'}:1: the prompt is 43 tokens, "
            "longer than --max_length=16; raise --max_length or shorten the prompt"
        ),
    ),
    "judge: a missing --model path": Case(
        "jdjudge.judge",
        lambda c: _judge(c, model="/nonexistent/run"),
        lambda c: "jdjudge.judge: error: --model=/nonexistent/run: no such directory",
    ),
    "judge: a directory that is neither run nor model": Case(
        "jdjudge.judge",
        lambda c: _judge(c, model=str(c.tmp)),
        lambda c: (
            f"jdjudge.judge: error: --model={c.tmp}: neither a jdjudge run (config.json "
            "and checkpoints/) nor a Hugging Face model directory (config.json and *.safetensors)"
        ),
    ),
    "judge: a workdir with no checkpoint yet": Case(
        "jdjudge.judge",
        lambda c: (
            _judge(c, model=str(c.run / "tokenizer" / ".."))
            if False
            else _judge(c, model=str(_no_checkpoint_copy(c)))
        ),
        lambda c: (
            f"jdjudge.judge: error: --model={c.tmp / 'unsaved'}: a jdjudge workdir with "
            "no checkpoint yet; train it first"
        ),
    ),
    "judge: a hub id with the Hub unreachable": Case(
        "jdjudge.judge",
        lambda c: _judge(c, model="org/judge"),
        lambda c: (
            f"jdjudge.judge: error: --model=org/judge: {NOT_CACHED}, and the Hub "
            f"({DEAD_HUB}) is unreachable; {OFFLINE_FIX} pass its local directory"
        ),
    ),
    "judge: an unwritable --output": Case(
        "jdjudge.judge",
        lambda c: _judge(c, output=str(c.locked / "out.jsonl")),
        lambda c: (
            rf"^jdjudge.judge: error: --output={re.escape(str(c.locked / 'out.jsonl'))}: "
            rf"cannot write in '{re.escape(str(c.locked))}' \([^)]+\)$"
        ),
    ),
    "judge: --output naming a directory": Case(
        "jdjudge.judge",
        lambda c: _judge(c, output=str(c.tmp)),
        lambda c: f"jdjudge.judge: error: --output={c.tmp}: is a directory; name a file",
    ),
    "judge: a missing --input": Case(
        "jdjudge.judge",
        lambda c: [
            f"--model={c.run}",
            f"--input={c.tmp / 'nope.jsonl'}",
            f"--output={c.tmp / 'out.jsonl'}",
        ],
        lambda c: (
            f"jdjudge.judge: error: --input={c.tmp / 'nope.jsonl'}: No such file or directory"
        ),
    ),
    "judge: a bad input line": Case(
        "jdjudge.judge",
        lambda c: _judge_items(c, [_item(["positive", "negative"]), {"id": "b"}]),
        lambda c: (
            f"jdjudge.judge: error: {c.tmp / 'bad.jsonl'}:2: field 'labels': missing or empty"
        ),
    ),
    "judge: a checkpoint step that does not exist": Case(
        "jdjudge.judge",
        lambda c: _judge(c, "--checkpoint=7"),
        lambda c: (
            "jdjudge.judge: error: --checkpoint=7: no checkpoint at step 7; there are [10, 20, 30]"
        ),
    ),
    # --- export --------------------------------------------------------------------------
    "export: not a run": Case(
        "jdjudge.export",
        lambda c: [f"--model={c.tmp}", f"--output={c.tmp / 'hf'}"],
        lambda c: (
            f"jdjudge.export: error: --model={c.tmp}: not a jdjudge workdir or checkpoint step"
        ),
    ),
    "export: --output not empty": Case(
        "jdjudge.export",
        lambda c: [f"--model={c.run}", f"--output={c.items.parent}"],
        lambda c: (
            f"jdjudge.export: error: --output={c.items.parent}: exists and is not empty; "
            "choose a new directory"
        ),
    ),
    "export: --peft_output for a run without LoRA": Case(
        "jdjudge.export",
        lambda c: [
            f"--model={c.run}",
            f"--output={c.tmp / 'hf'}",
            f"--peft_output={c.tmp / 'adapter'}",
        ],
        lambda c: "jdjudge.export: error: --peft_output: needs a LoRA run (lora.rank > 0)",
    ),
    "export: an unwritable --output": Case(
        "jdjudge.export",
        lambda c: [f"--model={c.run}", f"--output={c.locked / 'hf'}"],
        lambda c: (
            rf"^jdjudge.export: error: --output={re.escape(str(c.locked / 'hf'))}: "
            rf"cannot write in '{re.escape(str(c.locked))}' \([^)]+\)$"
        ),
    ),
}


def _records_with_a_bad_one() -> list[dict]:
    rows = [{"id": f"r{i}", "task": "raw", "fields": {"prompt": f"Is {i} even? Answer:"},
             "labels": ["yes", "no"], "counts": [i % 3, 2]} for i in range(40)]  # fmt: skip
    rows[33]["counts"] = [1, -2]
    return rows


def _no_checkpoint_copy(ctx: Ctx) -> Path:
    """A workdir whose run stopped before its first checkpoint (config and log only)."""
    unsaved = ctx.tmp / "unsaved"
    if not unsaved.exists():
        unsaved.mkdir()
        for name in ("config.json", "metrics.jsonl", "invocations.jsonl"):
            shutil.copy(ctx.run / name, unsaved / name)
    return unsaved


@pytest.fixture
def ctx(tiny_run, tmp_path) -> Ctx:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    work = tmp_path / "work"
    work.mkdir()
    items = work / "inputs" / "items.jsonl"
    items.parent.mkdir()
    rows = [_item(["positive", "neutral", "negative"]) | {"id": f"i{i}"} for i in range(3)]
    items.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return Ctx(tmp=work, run=run, items=items, locked=unwritable_dir(tmp_path))


@pytest.mark.parametrize("name", list(CASES))
def test_fault_is_one_line_exit_2_and_changes_nothing(name, ctx):
    case = CASES[name]
    args = case.args(ctx)  # may set up inputs: snapshot after
    before = snapshot(ctx.run, ctx.tmp)
    started = time.monotonic()
    result = run_module(case.module, args, ctx.tmp, cli_env(ctx.tmp.parent, **(case.env or {})))
    elapsed = time.monotonic() - started
    assert "Traceback" not in result.stderr, result.stderr
    expected = case.message(ctx)
    if expected.startswith("^"):
        assert re.fullmatch(expected[1:].rstrip("$"), result.last_line), result.stderr
    else:
        assert result.last_line == expected, result.stderr
    assert result.status == 2, result.stderr
    assert snapshot(ctx.run, ctx.tmp) == before, "the failed command wrote something"
    assert elapsed < 60, f"took {elapsed:.0f}s to fail"
