"""Writing outputs so that nothing is ever half-written, and refusing early what cannot be.

Every file or directory a CLI produces is written under a temporary name in the same
directory and renamed into place when complete (a rename within one filesystem is atomic), and
the temporary is removed if anything fails. Whether a place is writable is tested by creating
and removing a probe file there, before any work starts: permission bits say nothing to root,
and a read-only mount or a missing parent only shows when one tries.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jax

from jdjudge.entry import UsageError


def is_primary() -> bool:
    """Whether this process writes the run's shared files (logs, config, tokenizer, reports):
    process 0 only, so a multi-host run writes each once."""
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
        yield tmp
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
