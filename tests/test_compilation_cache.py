"""The persistent compilation cache: a second run of the same shapes loads the compiled
programs (JAX reports cache hits) and trains exactly as the first; empty turns it off."""

from __future__ import annotations

import jax
import pytest

from jdjudge import compilation_cache, train
from jdjudge.checkpoint.metrics_log import read_metrics
from tests.conftest import PROJECT_ROOT

TINY = str(PROJECT_ROOT / "configs" / "tiny.py")


@pytest.fixture
def restore_cache():
    """Put the session's cache back (tests/conftest.py) whatever the test did."""
    yield
    compilation_cache.enable(compilation_cache.DEFAULT_DIR)


def test_enable_points_jax_at_the_directory_and_empty_turns_it_off(tmp_path, restore_cache):
    assert compilation_cache.enable(str(tmp_path / "a")) == tmp_path / "a"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "a")
    assert jax.config.jax_enable_compilation_cache
    assert compilation_cache.enable("") is None
    assert not jax.config.jax_enable_compilation_cache
    assert compilation_cache.enable(str(tmp_path / "b")) == tmp_path / "b"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "b")
    assert jax.config.jax_enable_compilation_cache


def _events(log: list[str]):
    def listener(event: str, **_: object) -> None:
        log.append(event)

    return listener


def test_second_run_loads_compiled_programs_and_trains_identically(
    tmp_path, monkeypatch, restore_cache
):
    # every program is cached here, however fast it compiled (the default skips those < 1 s)
    monkeypatch.setattr(compilation_cache, "MIN_COMPILE_SECONDS", 0.0)
    cache = tmp_path / "cache"
    events: list[str] = []
    listener = _events(events)
    jax.monitoring.register_event_listener(listener)

    def run(name: str) -> list[dict]:
        workdir = tmp_path / name
        argv = ["jdjudge.train", f"--config={TINY}", f"--config.workdir={workdir}",
                "--config.steps=6", "--config.eval_every=3", "--config.log_every=3",
                "--config.data.num_items=200", f"--config.compilation_cache={cache}"]  # fmt: skip
        assert train.main(argv) == 0
        return [{k: v for k, v in e.items() if not k.endswith(("_s", "per_s"))}
                for e in read_metrics(workdir / "metrics.jsonl")]  # fmt: skip

    try:
        first = run("first")
        assert any(cache.iterdir()), "the first run wrote no cache entries"
        hits_before = events.count("/jax/compilation_cache/cache_hits")
        second = run("second")
    finally:
        jax.monitoring.unregister_event_listener(listener)
    assert events.count("/jax/compilation_cache/cache_hits") > hits_before
    assert second == first
