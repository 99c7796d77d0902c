"""How the C allocator treats freed host memory, set from the config's ``host_malloc`` key.

On the CPU backend XLA allocates each step's temporaries and outputs afresh (hundreds of MB
for a small judge). glibc serves every block above its mmap threshold (at most 32 MB) with its
own mmap and unmaps it on free, so the next step touches brand-new pages again: ~145,000
page faults a step, a third of a 256 × 4 training step's time (docs/performance.md). With
``keep``, glibc keeps freed memory in its heap for the next step instead: no mmap for large
blocks, no trimming of the heap's top, one arena (a thread's own arena gives memory back when
it shrinks). The resident set then stays at its peak, which a training process reaches in its
first step anyway.

The setting must come before JAX starts its CPU client: the client's threads pick their
arenas at their first allocation. Only glibc has ``mallopt``; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform

HOST_MALLOC = ("auto", "keep", "default")
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's <malloc.h>
_ACCELERATOR_PLUGINS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")
_applied: list[bool] = []


def runs_on_cpu() -> bool:
    """Whether JAX will compute on the CPU, without starting a backend: the first of
    ``jax_platforms`` / ``JAX_PLATFORMS`` where set, else whether no GPU or TPU plugin is
    installed (JAX falls back to the CPU without one)."""
    import jax

    platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    names = (dist.metadata["Name"] or "" for dist in importlib.metadata.distributions())
    return not any(name.lower().startswith(_ACCELERATOR_PLUGINS) for name in names)


def keep_freed_memory() -> bool:
    """glibc keeps freed blocks for reuse (see the module docstring); False where the C
    library is not glibc or refuses a setting."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # -1: never trim
    return all(libc.mallopt(option, value) == 1 for option, value in settings)


def configure(mode: str) -> bool:
    """Apply ``host_malloc``: ``keep``, ``default`` (glibc as it is) or ``auto`` (``keep``
    where JAX runs on the CPU). Returns whether freed memory is kept. Once per process: a
    later call (experiments run several CLIs in one) changes nothing."""
    if mode not in HOST_MALLOC:
        raise ValueError(f"host_malloc must be one of {HOST_MALLOC}, got {mode!r}")
    if not _applied:
        wanted = mode == "keep" or (mode == "auto" and runs_on_cpu())
        _applied.append(wanted and keep_freed_memory())
    return _applied[0]
