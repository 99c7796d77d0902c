"""Bad command lines and configs: one line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jdjudge import train
from tests.conftest import PROJECT_ROOT

TINY = str(PROJECT_ROOT / "configs" / "tiny.py")

BAD_CASES = {
    "missing --config": ([], "missing --config"),
    "no such config file": (["--config=configs/nope.py"], "No such file or directory"),
    "unknown config argument": ([f"--config={TINY}:nope"], "unknown dataset 'nope'"),
    "unknown top-level key": (
        [f"--config={TINY}", "--config.stepz=3"],
        "unknown config key 'stepz'",
    ),
    "unknown nested key": (
        [f"--config={TINY}", "--config.model.hiden_size=3"],
        "unknown config key 'model.hiden_size' in --config.model.hiden_size=3 under 'model'",
    ),
    "value of the wrong type": (
        [f"--config={TINY}", "--config.steps=abc"],
        "--config.steps=abc: not a valid int",
    ),
    "alpha above 1": ([f"--config={TINY}", "--config.objective.alpha=1.5"], "objective.alpha=1.5"),
    "negative epsilon": (
        [f"--config={TINY}", "--config.objective.adversarial.epsilon=-0.1"],
        "objective.adversarial.epsilon=-0.1: must be >= 0",
    ),
    "zero steps": ([f"--config={TINY}", "--config.steps=0"], "steps=0: must be >= 1"),
    "no ascent steps with a ball": (
        [f"--config={TINY}", "--config.objective.adversarial.steps=0"],
        "objective.adversarial.steps=0: must be >= 1 when epsilon > 0",
    ),
    "lora dropout of 1": (
        [f"--config={TINY}", "--config.lora.rank=4", "--config.lora.dropout=1.0"],
        "lora.dropout=1.0: must be < 1",
    ),
    "unknown lora module": (
        [f"--config={TINY}", "--config.lora.target_modules=('q_proj', 'qkv')"],
        "lora.target_modules=('q_proj', 'qkv'): one of q_proj",
    ),
    "unknown solver": (
        [f"--config={TINY}", "--config.objective.adversarial.solver=cvxpy"],
        "objective.adversarial.solver='cvxpy'",
    ),
    "removed key model.family": (
        [f"--config={TINY}", "--config.model.family=gpt2"],
        "unknown config key 'model.family'",
    ),
    "kv heads do not divide heads": (
        [f"--config={TINY}", "--config.model.num_kv_heads=3"],
        "model.num_kv_heads=3: must divide model.num_heads=4",
    ),
    "mesh larger than the devices": (
        [f"--config={TINY}", "--config.mesh.data=64"],
        "needs 64 devices",
    ),
    "real dataset without a path": (
        [f"--config={TINY}:chaosnli_snli"],
        "data.path='': required for dataset 'chaosnli_snli'",
    ),
    "batch not divisible by data shards": (
        [f"--config={TINY}", "--config.batch_size=6"],
        "batch_size=6: must be divisible by the 4 data-parallel shards",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_config_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    args, expected = BAD_CASES[case]
    workdir = tmp_path / "run"
    argv = ["jdjudge.train", *args]
    if any(a.startswith("--config=") and "nope" not in a for a in args):
        argv.append(f"--config.workdir={workdir}")
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("jdjudge.train: error: ")
    assert expected in err
    assert not workdir.exists()


def test_workdir_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "afile"
    path.write_text("not a directory")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["jdjudge.train", f"--config={TINY}", f"--config.workdir={path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"workdir='{path}': exists and is not a directory" in err
    assert path.read_text() == "not a directory"


def test_real_cli_reports_one_line_without_traceback(tmp_path):
    """The installed entry point, as a user runs it: no traceback for an unknown key."""
    result = subprocess.run(
        [sys.executable, "-m", "jdjudge.train", f"--config={TINY}", "--config.nokey=1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "jdjudge.train: error: unknown config key 'nokey' in --config.nokey=1"
    )
    assert list(tmp_path.iterdir()) == []


def test_bad_record_anywhere_stops_the_run_before_anything_is_written(tmp_path, capsys):
    records = [
        {"id": f"r{i}", "task": "raw", "fields": {"prompt": f"Is {i} even? Answer:"},
         "labels": ["yes", "no"], "counts": [i % 3, 2]}
        for i in range(40)
    ]  # fmt: skip
    records[33]["counts"] = [1, -2]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    workdir = tmp_path / "run"
    argv = [
        "jdjudge.train", f"--config={TINY}:jsonl", f"--config.data.path={path}",
        f"--config.workdir={workdir}",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"jdjudge.train: error: data: {path}:34: field 'counts'")
    assert len(err.splitlines()) == 1
    assert not workdir.exists()


def test_colliding_verbalizers_are_refused(tmp_path, capsys):
    """Labels whose answer words share a token (here: both unknown to a saved tokenizer, so
    both map to <unk>) cannot be told apart: refused before any work."""
    from jdjudge.data.tokenizer import build_tokenizer

    tokenizer_dir = tmp_path / "tok"
    build_tokenizer(["Is it even ? Answer :"]).save_pretrained(tokenizer_dir)
    records = [
        {"id": f"r{i}", "task": "raw", "fields": {"prompt": "Is it even? Answer:"},
         "labels": ["yes", "no"], "counts": [1, 2]}
        for i in range(40)
    ]  # fmt: skip
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    argv = [
        "jdjudge.train", f"--config={TINY}:jsonl", f"--config.data.path={path}",
        f"--config.data.tokenizer={tokenizer_dir}", f"--config.workdir={tmp_path / 'run'}",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jdjudge.train: error: data: ") and "yes" in err and "no" in err
    assert not (tmp_path / "run").exists()
