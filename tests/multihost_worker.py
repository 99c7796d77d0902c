"""One process of a multi-process training run, recording every file it writes.

``python -m tests.multihost_worker AUDIT.json <train args...>`` runs ``jdjudge.train`` and
writes the paths this process opened for writing, created, renamed or removed (from
Python's audit hooks, which see every such call made from Python) to ``AUDIT.json``. Orbax's
array data is written by TensorStore in C++, which the hooks do not see; everything else
(logs, config, tokenizer, checkpoint metadata) goes through Python.

With ``JDJUDGE_TEST_FAIL_AT_STEP=s`` in its environment, process 1 raises as it takes the batch
of step s: a failure in one process alone.
"""

from __future__ import annotations

import json
import os
import sys

FAIL_AT_STEP = "JDJUDGE_TEST_FAIL_AT_STEP"
WRITE_EVENTS = {"os.rename", "os.replace", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree",
                "os.truncate", "shutil.move"}  # fmt: skip


def main() -> int:
    audit_path, argv = sys.argv[1], sys.argv[2:]
    written: set[str] = set()

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if writes:
                written.add(os.fsdecode(args[0]))
        elif event in WRITE_EVENTS:  # a rename's source and destination both count
            written.update(
                os.fsdecode(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))
            )

    sys.addaudithook(hook)
    from jdjudge import train

    if FAIL_AT_STEP in os.environ:
        _fail_in_process_1(int(os.environ[FAIL_AT_STEP]))

    try:
        return train.main(["jdjudge.train", *argv])
    finally:
        with open(audit_path + ".tmp", "w") as handle:
            json.dump(sorted(written), handle)
        os.replace(audit_path + ".tmp", audit_path)


def _fail_in_process_1(step: int) -> None:
    import jax

    from jdjudge.data import prefetch

    take = prefetch.Prefetcher.get

    def get(self: prefetch.Prefetcher, at: int) -> object:
        if at == step and jax.process_index() == 1:
            raise RuntimeError(f"injected failure at step {at}")
        return take(self, at)

    prefetch.Prefetcher.get = get  # type: ignore[method-assign]


if __name__ == "__main__":
    sys.exit(main())
