"""Writing outputs so that nothing is ever half-written, and refusing early what cannot be.

Every file or directory a CLI produces is written under a temporary name in the same
directory and renamed into place when complete (a rename within one filesystem is atomic), and
the temporary is removed if anything fails. Whether a place is writable is tested by creating
and removing a probe file there, before any work starts: permission bits say nothing to root,
and a read-only mount or a missing parent only shows when one tries.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jdjudge.entry import UsageError


def _process_umask() -> int:
    """The umask, read once: the temporaries below are created private (0600 / 0700), and
    get the permissions a plain ``open``/``mkdir`` would have given before they are renamed
    into place. (Setting and restoring the umask to read it is racy with other threads, so
    it is read at import.)"""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _process_umask()


def is_primary() -> bool:
    """Whether this process writes the run's shared files (logs, config, tokenizer, reports):
    process 0 only, so a multi-host run writes each once."""
    import jax  # here, not at the top: writing files needs no JAX (plots, the API cache)

    return jax.process_index() == 0


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: str | os.PathLike[str], what: str) -> None:
    """UsageError unless files can be created in ``path`` (or, while it does not exist, in
    its nearest existing ancestor, where it would be created). Leaves nothing behind."""
    where = _nearest_existing(Path(path))
    if not where.is_dir():
        raise UsageError(f"{what}: {str(where)!r} is a file, not a directory")
    try:
        handle, probe = tempfile.mkstemp(dir=where, prefix=".jdjudge-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UsageError(f"{what}: cannot write in {str(where)!r} ({error.strerror})") from None


def check_new_file(path: str | os.PathLike[str], what: str) -> None:
    """``path`` can be (over)written as a file: it is not a directory and its folder is
    writable."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what}={path}: is a directory; name a file")
    check_writable_dir(path.parent, f"{what}={path}")


def check_new_dir(path: str | os.PathLike[str], what: str) -> None:
    """``path`` can become an output directory: absent or an empty directory, and its parent
    writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what}={path}: exists and is a file")
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(f"{what}={path}: exists and is not empty; choose a new directory")
    check_writable_dir(path.parent, f"{what}={path}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any
    failure it is removed."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        os.chmod(tmp, 0o666 & ~UMASK)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it takes ``path``'s place (an
    existing ``path`` is replaced whole), on any failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~UMASK)
        yield tmp
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def json_safe(value: Any) -> Any:
    """Strict JSON: NaN (an undefined correlation, an empty bin) becomes null and ±inf a
    string, as no JSON parser but Python's accepts them."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value
