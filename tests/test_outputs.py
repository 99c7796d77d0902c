"""Atomic outputs, writability probes and the process-0 guard."""

from __future__ import annotations

import pytest

from jdjudge import workdir as workdir_module
from jdjudge.checkpoint.metrics_log import MetricsWriter
from jdjudge.config.schema import Config
from jdjudge.data.tokenizer import synthetic_tokenizer
from jdjudge.entry import UsageError
from jdjudge.models.hub import looks_like_local_path
from jdjudge.outputs import atomic_dir, atomic_file, check_new_dir, check_new_file


def test_a_failed_atomic_file_leaves_neither_the_file_nor_a_temporary(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("died mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_file(target) as tmp:
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    assert target.read_text() == "whole"


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "tokenizer"
    with atomic_dir(target) as tmp:
        (tmp / "a.json").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b.json").write_text("2")
        raise RuntimeError("died")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]
    assert [p.name for p in target.iterdir()] == ["a.json"]
    with atomic_dir(target) as tmp:
        (tmp / "c.json").write_text("3")
    assert [p.name for p in target.iterdir()] == ["c.json"]  # replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]


def test_output_checks_name_the_flag_and_leave_nothing(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UsageError, match=r"--output=.*: is a directory; name a file"):
        check_new_file(tmp_path, "--output")
    with pytest.raises(UsageError, match="exists and is not empty; choose a new directory"):
        check_new_dir(tmp_path / "full", "--output")
    with pytest.raises(UsageError, match="exists and is a file"):
        check_new_dir(tmp_path / "full" / "x", "--output")
    check_new_dir(tmp_path / "new" / "deeper", "--output")  # creatable: fine, and not created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


@pytest.mark.parametrize(
    ("name", "local"),
    [("meta-llama/Llama-3.1-8B-Instruct", False), ("gpt2", False),
     ("/nonexistent/llama", True), ("./models/x", True), ("~/m", True), ("a/b/c", True)],
)  # fmt: skip
def test_hub_ids_and_paths_are_told_apart(name, local):
    assert looks_like_local_path(name) is local


def test_only_process_0_writes_the_shared_files(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir_module, "is_primary", lambda: False)
    config = Config(workdir=str(tmp_path / "run"))
    workdir_module.record_start(config, synthetic_tokenizer(), 0, 10, [])
    with MetricsWriter(tmp_path / "metrics.jsonl", enabled=False) as log:
        log.write(0, "eval", {"kl": 0.5})
    assert list(tmp_path.iterdir()) == []


def test_atomic_outputs_get_the_permissions_of_a_plain_open(tmp_path):
    """Temporaries are created private (0600 / 0700); what is renamed into place has the
    modes open()/mkdir() give under the umask, so a shared run directory stays readable."""
    import os
    import stat

    with atomic_file(tmp_path / "a.json") as tmp:
        tmp.write_text("{}")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "inside.txt").write_text("x")
    (tmp_path / "plain.json").write_text("{}")
    (tmp_path / "plain-dir").mkdir()

    def mode(name: str) -> int:
        return stat.S_IMODE(os.stat(tmp_path / name).st_mode)

    assert mode("a.json") == mode("plain.json")
    assert mode("d") == mode("plain-dir")
