"""SIGTERM/SIGINT → checkpoint at the next step boundary; a second Ctrl-C → stop at once.

Cloud TPU VMs announce preemption and maintenance with SIGTERM; a user stops a run with
Ctrl-C. The first signal only sets a flag; the training loop saves at the next step boundary
and exits cleanly. On multi-host runs JAX's preemption sync point makes every host agree on
the same step: there the runtime's own preemption notifier takes SIGTERM (on any one host,
it tells all of them), a Ctrl-C on one host is passed on to it as a SIGTERM, and the hosts
stop only at the step the runtime's sync point names, never each at its own.

A second Ctrl-C ends the process at once with exit status 130, even in the middle of an XLA
compilation: Python runs signal handlers only between bytecodes of the main thread, which can
be minutes away, so the signals are also read from CPython's wakeup file descriptor by a small
thread that acts immediately. Ending the process mid-save never damages a checkpoint: Orbax
commits a step by renaming its temporary directory, and the unfinished one is removed when
the run is reopened.
"""

from __future__ import annotations

import os
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
        self._forwarded = False

    def _forward(self) -> None:
        """Hand a signal this process saw to the runtime's preemption notifier (it listens
        for SIGTERM), the only thing that makes all processes stop at one step; once."""
        if not self._forwarded:
            self._forwarded = True
            os.kill(os.getpid(), signal.SIGTERM)

    def _on_signal(self, signum: int) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            interrupted(
                self.prog,
                "stopped at once by a second SIGINT; checkpoints already committed are "
                "intact; rerun the same command to resume",
            )
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            if _multiprocess():
                self._forward()
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
        """Whether a stop was asked for before the loop: on one process, any signal; with
        several, never here (they must agree, which happens at a step's sync point)."""
        return self.signal_name is not None and not _multiprocess()

    def should_stop(self, step: int) -> bool:
        """True when this process got a signal or, with several processes, when JAX's
        preemption service says all of them have reached the agreed sync step (a signal seen
        by this process alone must not stop it: the others would wait for it forever)."""
        if _multiprocess():
            if self.signal_name is not None:  # e.g. seen before the processes joined
                self._forward()
            try:
                reached = multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # no preemption service: nothing can make the hosts agree
                return False
            if reached:
                self.signal_name = self.signal_name or "preemption notice"
            return reached
        return self.signal_name is not None


def _multiprocess() -> bool:
    """Whether this run spans several processes (checked only once JAX is initialized)."""
    return jax.distributed.is_initialized() and jax.process_count() > 1
