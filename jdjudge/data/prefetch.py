"""Training batches prepared ahead on a background thread, so that the host's share of a step
(planning and materializing the batch, taking this process's rows, the transfer into the batch
sharding) overlaps the device's compute of the previous steps instead of following it.

One thread calls ``make(step)`` for steps start, start+1, … in order, so the loop gets exactly
the batches it would get by calling ``make`` itself: resume stays bitwise the same run. At most
``depth`` steps are prepared ahead of the one the loop last took, which bounds the memory the
waiting batches hold on the device. An exception while preparing step s is raised by
``get(s)``, in the loop, with its own type and traceback (a DataError stays the CLI's one-line
error); the steps before s run as they would have. The thread lives only inside the ``with``
block, and is a daemon, so that nothing can keep the process from exiting.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar, cast

import jax
import numpy as np
from jax.sharding import Mesh

from jdjudge.data.sources import BatchSource, process_rows
from jdjudge.sharding import global_batch

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """``with Prefetcher(make, start, stop) as batches: batches.get(step)`` for each step of
    ``range(start, stop)`` in order."""

    def __init__(self, make: Callable[[int], T], start: int, stop: int, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self._make, self._start, self._stop = make, start, stop
        self._next = start
        self._slots = threading.Semaphore(depth)  # one per step prepared but not yet taken
        self._ready: queue.SimpleQueue[tuple[T | None, BaseException | None]] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="jdjudge-prefetch", daemon=True)

    def __enter__(self) -> Prefetcher[T]:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _produce(self) -> None:
        for step in range(self._start, self._stop):
            self._slots.acquire()
            if self._closed.is_set():
                return
            try:
                item = self._make(step)
            except BaseException as error:  # raised again by get(step), in the loop's thread
                self._ready.put((None, error))
                return
            self._ready.put((item, None))

    def get(self, step: int) -> T:
        """The batch of ``step`` (the next one in order), or the exception preparing it raised."""
        if self._closed.is_set() or self._thread.ident is None:
            raise RuntimeError("Prefetcher.get outside its with block, or after an error")
        if step != self._next or step >= self._stop:
            raise ValueError(f"prefetched batches come in order: expected step {self._next}, "
                             f"got {step} (range ends at {self._stop})")  # fmt: skip
        item, error = self._ready.get()
        self._next += 1
        self._slots.release()
        if error is not None:
            self._closed.set()  # the thread has ended: no later step can come
            raise error
        return cast(T, item)

    def close(self) -> None:
        """Stop the thread and wait for it (at most the one ``make`` call under way), then drop
        the batches it prepared for steps that will not run."""
        self._closed.set()
        self._slots.release()  # wakes the thread if it waits for a slot
        if self._thread.ident is not None:
            self._thread.join()
        while not self._ready.empty():
            self._ready.get_nowait()


def local_batch(batch: dict[str, np.ndarray], with_truth: bool) -> dict[str, np.ndarray]:
    """This process's rows of a global batch, without reference targets the data lacks."""
    local = process_rows(batch, jax.process_index(), jax.process_count())
    if not with_truth:
        local.pop("true_targets", None)
    return local


HostAndDevice = tuple[dict[str, np.ndarray], dict[str, jax.Array]]


def train_batches(
    source: BatchSource, mesh: Mesh, with_truth: bool, start: int, stop: int, depth: int = 2
) -> Prefetcher[HostAndDevice]:
    """The training loop's batches for steps [start, stop), each as the global host batch
    (what ``Throughput.add`` counts) and this process's rows placed in the batch sharding."""

    def prepare(step: int) -> HostAndDevice:
        host = source.train_batch(step)
        return host, global_batch(local_batch(host, with_truth), mesh)

    return Prefetcher(prepare, start, stop, depth)
