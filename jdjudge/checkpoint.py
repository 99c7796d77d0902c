"""Orbax checkpoints of the train state, with the resolved config beside it.

Saves are asynchronous (training continues while the state is written) and atomic: Orbax
writes into a temporary directory and renames it on commit, so an interrupted save is never
listed as a checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def checkpoint_manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """The run's manager over ``<workdir>/checkpoints`` (absolute: Orbax requires it)."""
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "metadata"))


def save_checkpoint(
    manager: ocp.CheckpointManager, step: int, state: Any, metadata: dict[str, Any]
) -> None:
    """Start an async save of ``state`` and ``metadata`` at ``step`` (call
    ``manager.wait_until_finished()`` before exiting)."""
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)
        ),
    )


def restore_checkpoint(
    manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """Restore onto the shardings carried by ``abstract_state`` (ShapeDtypeStructs), which
    may describe a different mesh than the one that saved: Orbax reshards on read."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {manager.directory}")
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), metadata=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["metadata"]
