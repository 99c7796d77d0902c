"""JAX's persistent compilation cache, set from the config's ``compilation_cache`` key.

Compiling the train step is a large share of a short run (seconds for the tiny model, minutes
for a 30-layer one on CPU), and every rerun, resume, evaluation or grid cell of the same
shapes compiles the same programs again. With the cache on, XLA's executables are stored on
disk keyed by the program, the compile options, the devices and the JAX version, so a repeat
loads instead of compiling; a changed program simply misses. In a multi-process run JAX
lets only one process write an entry.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_DIR = "~/.cache/jdjudge/jax"
MAX_BYTES = 4 << 30  # the least recently used entries go beyond this
MIN_COMPILE_SECONDS = 1.0  # programs that compile faster are not worth a file


def enable(directory: str) -> Path | None:
    """Point JAX's cache at ``directory`` (``~`` expanded); empty turns it off. Returns the
    directory in use. Callable more than once per process (experiments run many CLIs in
    one), so a changed directory resets JAX's handle on the old one."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    if not directory:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = Path(directory).expanduser()
    if jax.config.jax_compilation_cache_dir != str(path):
        compilation_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path
