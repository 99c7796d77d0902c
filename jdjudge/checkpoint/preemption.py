"""SIGTERM/SIGINT → checkpoint at the next step boundary and exit cleanly.

Cloud TPU VMs announce preemption and maintenance with SIGTERM; a user stops a run with
Ctrl-C. Either way the handler only sets a flag; the training loop saves at the next step
boundary. On multi-host runs JAX's preemption sync point makes every host agree on the same
step. A second Ctrl-C interrupts at once, for the impatient.
"""

from __future__ import annotations

import signal
from types import FrameType

import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Context manager installing the handlers; ``should_stop(step)`` is checked per step."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> PreemptionWatcher:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def should_stop(self, step: int) -> bool:
        """True when this process got a signal or, multi-host, when JAX's preemption
        service says all hosts have reached the agreed sync step."""
        if jax.process_count() > 1:
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signal_name = self.signal_name or "preemption notice"
                    return True
            except RuntimeError:
                pass  # preemption service not initialized (e.g. not a TPU pod)
        return self.signal_name is not None
