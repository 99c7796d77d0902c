"""Throughput of the training loop between two log events: step time, real tokens/s,
padding efficiency and MFU.

Only steps count: the window opens once the first step of an invocation has finished (its
compilation excluded), and time spent evaluating or checkpointing is paused out. The log
step's metrics fetch is the sync point that makes the wall time mean device time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping

import numpy as np

from jdjudge.models.config import DecoderConfig
from jdjudge.training.flops import train_flops_per_token


class Throughput:
    """Counts a window of steps; ``report()`` closes it and opens the next."""

    def __init__(
        self,
        model: DecoderConfig,
        lora_params: int,
        num_devices: int,
        peak_flops: float | None,
    ) -> None:
        self.model, self.lora_params = model, lora_params
        self.peak = None if peak_flops is None else peak_flops * num_devices
        self._opened: float | None = None
        self._reset()

    def _reset(self) -> None:
        self.steps = self.real = self.computed = 0
        self.flops = self.paused = 0.0

    def open(self) -> None:
        """Start timing now (call after the first step has finished)."""
        self._opened = time.perf_counter()
        self._reset()

    def add(self, batch: Mapping[str, np.ndarray]) -> None:
        """One step's global batch: its real (non-padding) and computed token counts."""
        if self._opened is None:
            return
        segments = np.asarray(batch["segment_ids"])
        real = int(np.count_nonzero(segments))
        self.steps += 1
        self.real += real
        self.computed += segments.size
        self.flops += real * train_flops_per_token(self.model, segments.shape[-1], self.lora_params)

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Time inside is not step time (evaluation, checkpointing)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - started

    def report(self) -> dict[str, float]:
        """The window's figures (empty before the window opened or with no steps in it)."""
        if self._opened is None or not self.steps:
            return {}
        elapsed = max(time.perf_counter() - self._opened - self.paused, 1e-9)
        figures = {
            "step_time_s": elapsed / self.steps,
            "tokens_per_s": self.real / elapsed,
            "padding_efficiency": self.real / max(self.computed, 1),
        }
        if self.peak is not None:
            figures["mfu"] = self.flops / elapsed / self.peak
        self.open()
        return figures
