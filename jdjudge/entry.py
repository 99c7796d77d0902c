"""The edge every CLI shares: a failure the user caused is one line on stderr and exit 2,
an interrupt is one line and exit 130, and nothing else escapes as a traceback.

Each entry point's ``main`` raises; ``run_cli`` turns the exception into the line and the exit
status, so the mapping is written once. Exit statuses: 0 done, 1 the run itself failed (a
non-finite loss under ``nan_guard=stop``), 2 bad input (flags, config, data, paths), 130
interrupted.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from jdjudge.config.fields import ConfigError
from jdjudge.data.schema import DataError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A failure the user caused and can fix; the message says which flag or file, and how."""


class RunFailed(Exception):
    """The run itself failed (not its inputs): exit status 1."""


def _joined() -> bool:
    """Whether this process is one of several joined by ``jax.distributed`` (without
    importing JAX where nothing has)."""
    jax = sys.modules.get("jax")
    return jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1


def _exit(status: int) -> None:
    """Exit with ``status``. A process of a multi-process run that fails leaves at once:
    JAX's orderly shutdown would wait (minutes) for the others, which wait for it in their
    next collective; gone, it stops sending heartbeats and the runtime stops them all."""
    if status and _joined():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    raise SystemExit(status)


def fail(prog: str, message: str, status: int = EXIT_USAGE) -> None:
    """Print one line to stderr and exit: the whole of what a user needs to fix their input."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    _exit(status)


def interrupted(prog: str, message: str) -> None:
    """Exit 130 at once, from any thread. ``os._exit`` skips interpreter teardown, which with
    XLA's threads mid-computation is where a traceback or a segfault would come from;
    everything written so far was written atomically, so nothing is left half-done."""
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)


def run_cli(prog: str, main: Callable[[], int]) -> int:
    """``main()`` with the exit-status contract above."""
    try:
        return main()
    except (UsageError, ConfigError, DataError) as error:
        fail(prog, str(error))
    except RunFailed as error:
        fail(prog, str(error), status=1)
    except KeyboardInterrupt:
        interrupted(prog, "interrupted; nothing was written")
    except Exception:
        if not _joined():
            raise
        traceback.print_exc()  # a bug: its traceback, then out at once (see _exit)
        _exit(1)
    raise AssertionError("unreachable")  # fail and interrupted never return
