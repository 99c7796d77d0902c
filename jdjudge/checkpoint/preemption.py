"""SIGTERM/SIGINT → checkpoint at the next step boundary; a second Ctrl-C → stop at once.

Cloud TPU VMs announce preemption and maintenance with SIGTERM; a user stops a run with
Ctrl-C. The first signal only sets a flag; the training loop saves at the next step boundary
and exits cleanly. On multi-host runs JAX's preemption sync point makes every host agree on
the same step.

A second Ctrl-C ends the process at once with exit status 130, even in the middle of an XLA
compilation: Python runs signal handlers only between bytecodes of the main thread, which can
be minutes away, so the signals are also read from CPython's wakeup file descriptor by a small
thread that acts immediately. Ending the process mid-save never damages a checkpoint: Orbax
commits a step by renaming its temporary directory, and the unfinished one is removed when
the run is reopened.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from types import FrameType

import jax
from jax.experimental import multihost_utils

from jdjudge.entry import interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionWatcher:
    """Context manager installing the handlers; ``should_stop(step)`` is checked per step."""

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._previous_fd = -1
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None

    def _on_signal(self, signum: int) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            interrupted(
                self.prog,
                "stopped at once by a second SIGINT; checkpoints already committed are "
                "intact; rerun the same command to resume",
            )
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            print(
                f"{self.prog}: {self.signal_name}: stopping at the next step boundary with a "
                "checkpoint (press Ctrl-C again to stop at once, without one)",
                file=sys.stderr,
                flush=True,
            )

    def _listen(self, reader: socket.socket) -> None:
        while data := reader.recv(64):
            for signum in data:
                if signum in SIGNALS:
                    self._on_signal(signum)

    @staticmethod
    def _python_handler(signum: int, frame: FrameType | None) -> None:
        """Installed so the signals neither kill the process nor raise KeyboardInterrupt;
        the listening thread does the work."""
        del signum, frame

    def __enter__(self) -> PreemptionWatcher:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._sockets = (reader, writer)
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._python_handler)
        self._previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._listen, args=(reader,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        if self._sockets is not None:
            reader, writer = self._sockets
            writer.close()  # the listener's recv returns b"" and the thread ends
            if self._thread is not None:
                self._thread.join(timeout=5)
            reader.close()

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for (without the multi-host agreement)."""
        return self.signal_name is not None

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
