"""The training batches prepared ahead on a thread: the same batches in the same order, at
most ``depth`` ahead, errors raised at their step, and no thread left behind."""

from __future__ import annotations

import contextlib
import threading
import time
import traceback

import numpy as np
import pytest

from jdjudge.data.prefetch import Prefetcher, train_batches
from jdjudge.data.schema import DataError
from jdjudge.entry import run_cli
from jdjudge.sharding import batch_sharding, make_mesh


class FakeSource:
    """A batch source that records the steps asked for (from whichever thread)."""

    def __init__(self, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.calls: list[int] = []
        self.fail_at, self.delay = fail_at, delay

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        self.calls.append(step)
        time.sleep(self.delay)
        if step == self.fail_at:
            raise DataError(f"bad batch {step}", location="fake")
        rows = np.arange(8 * 4, dtype=np.int32).reshape(8, 4) + step
        return {"tokens": rows, "segment_ids": np.ones_like(rows),
                "true_targets": np.full((8, 3), step, np.float32)}  # fmt: skip

    def eval_batches(self, split):  # pragma: no cover - the protocol's other half
        return iter(())


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "jdjudge-prefetch"]


def _wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_batches_come_in_order_and_are_the_sources_own():
    source = FakeSource()
    with Prefetcher(source.train_batch, 3, 10) as batches:
        got = [batches.get(step) for step in range(3, 10)]
    assert source.calls == list(range(3, 10))  # each step once, in order
    for step, batch in zip(range(3, 10), got, strict=True):
        np.testing.assert_array_equal(batch["tokens"], source.train_batch(step)["tokens"])
    assert not _prefetch_threads()


def test_the_thread_never_runs_more_than_depth_ahead():
    source = FakeSource()
    depth = 2
    with Prefetcher(source.train_batch, 0, 100, depth=depth) as batches:
        for taken in range(5):
            _wait_for(lambda n=taken: len(source.calls) == n + depth)
            time.sleep(0.1)  # time to overrun, were it able to
            assert source.calls == list(range(taken + depth))
            batches.get(taken)
    assert not _prefetch_threads()


def test_out_of_order_or_past_the_end_is_refused():
    source = FakeSource()
    with Prefetcher(source.train_batch, 0, 2) as batches:
        with pytest.raises(ValueError, match="expected step 0, got 1"):
            batches.get(1)
        batches.get(0)
        batches.get(1)
        with pytest.raises(ValueError, match="expected step 2, got 2"):
            batches.get(2)
    with pytest.raises(RuntimeError):
        batches.get(2)


def test_an_error_is_raised_at_its_own_step_with_its_type_and_traceback():
    source = FakeSource(fail_at=4)
    with Prefetcher(source.train_batch, 0, 10) as batches:
        for step in range(4):
            batches.get(step)
        with pytest.raises(DataError, match="fake: bad batch 4") as error:
            batches.get(4)
        _wait_for(lambda: not _prefetch_threads())  # the thread ended with the error
    frames = [frame.name for frame in traceback.extract_tb(error.value.__traceback__)]
    assert "train_batch" in frames  # raised where it happened, in the thread
    assert source.calls == [0, 1, 2, 3, 4]


def test_a_data_error_in_the_thread_is_still_the_clis_one_line(capsys):
    def main() -> int:
        with Prefetcher(FakeSource(fail_at=1).train_batch, 0, 5) as batches:
            for step in range(5):
                batches.get(step)
        return 0

    with pytest.raises(SystemExit) as exit_info:
        run_cli("prog", main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "prog: error: fake: bad batch 1\n"


@pytest.mark.parametrize("ending", ["stop", "exception", "keyboard_interrupt"])
def test_no_thread_outlives_the_block(ending):
    source = FakeSource(delay=0.05)  # the thread is mid-batch when the block ends
    raises = pytest.raises((RuntimeError, KeyboardInterrupt))
    with (
        raises if ending != "stop" else contextlib.nullcontext(),
        Prefetcher(source.train_batch, 0, 1000) as batches,
    ):
        (thread,) = _prefetch_threads()
        assert thread.daemon  # can never hold up the process's exit
        for step in range(3):
            batches.get(step)
        if ending == "exception":
            raise RuntimeError("the loop failed")
        if ending == "keyboard_interrupt":
            raise KeyboardInterrupt
    assert not thread.is_alive() and not _prefetch_threads()
    assert len(source.calls) <= 3 + 2


def test_train_batches_returns_the_host_batch_and_its_rows_in_the_batch_sharding():
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    source = FakeSource()
    with train_batches(source, mesh, with_truth=False, start=5, stop=7) as batches:
        host, device = batches.get(5)
    np.testing.assert_array_equal(host["tokens"], source.train_batch(5)["tokens"])
    assert "true_targets" in host and set(device) == {"tokens", "segment_ids"}
    assert device["tokens"].sharding == batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(device["tokens"]), host["tokens"])
