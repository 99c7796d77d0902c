"""Orbax checkpoints: async, atomic, the newest ``keep`` plus the best by eval KL, resharding
on restore.

A checkpoint holds everything a resume needs: the train state (step, parameters, optimizer
state), the resolved config, a fingerprint of the data, the jdjudge version, the eval KL of its
step and the tokenizer files. Orbax writes each step into a temporary directory and renames it
on commit, so a save interrupted by SIGKILL never appears as a step (its temporary directory
is removed when the run is reopened); a step directory damaged some other way fails to restore
and is skipped with a warning in favour of the previous one.

Retention is decided here, not by Orbax's ``BestN``: that policy forgets the metrics of steps
saved before a restart (and ranks a step saved without metrics as best), so a resumed run
deleted its best checkpoint. Each step's eval KL is stored in its own metadata and re-read on
open, so the best is the best over the whole run, across any number of resumes.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jdjudge.checkpoint.retention import choose_step, steps_to_keep

CHECKPOINT_DIR = "checkpoints"
ITEMS = ("state", "metadata", "tokenizer")


def tree_is_finite(tree: Any) -> bool:
    """Whether every floating leaf of ``tree`` is finite (never save a NaN state)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    return all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


def tokenizer_files(tokenizer: Any) -> dict[str, str]:
    """The tokenizer's saved files as text, stored in each checkpoint so it is
    self-contained; saved to a scratch directory, so every process can build it."""
    with tempfile.TemporaryDirectory(prefix="jdjudge-tokenizer-") as scratch:
        tokenizer.save_pretrained(scratch)
        return {
            path.name: path.read_text(encoding="utf-8")
            for path in sorted(Path(scratch).iterdir())
            if path.is_file()
        }


class RunCheckpoints:
    """The checkpoints of one workdir. ``read_only`` (judge, export) never creates, cleans up
    or deletes anything."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        keep: int = 3,
        keep_best: bool = True,
        read_only: bool = False,
    ) -> None:
        self.directory = Path(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)))
        self.keep, self.keep_best, self.read_only = keep, keep_best, read_only
        options = ocp.CheckpointManagerOptions(  # Orbax's own read_only mode logs a warning
            create=not read_only,
            max_to_keep=None,  # retention is ours (see the module docstring)
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self.eval_kl: dict[int, float | None] = {
            step: self._stored_eval_kl(step) for step in self.manager.all_steps()
        }

    def _stored_eval_kl(self, step: int) -> float | None:
        try:
            value = self.read_metadata(step).get("eval_kl")
        except Exception:  # a damaged step: restoring it warns and skips it
            return None
        return None if value is None else float(value)

    def steps(self) -> list[int]:
        return sorted(self.eval_kl)

    def read_metadata(self, step: int) -> dict[str, Any]:
        args = ocp.args.Composite(metadata=ocp.args.JsonRestore())
        return dict(self.manager.restore(step, args=args)["metadata"])

    def newest_metadata(self) -> dict[str, Any]:
        """The metadata of the newest step that has readable metadata, else {}."""
        for step in reversed(self.steps()):
            try:
                return self.read_metadata(step)
            except Exception:  # a damaged step: restore_newest warns about it
                continue
        return {}

    def choose(self, which: str) -> tuple[int, str]:
        """``best`` / ``latest`` / a step number → (step, why); ValueError if none."""
        return choose_step(self.eval_kl, which)

    def save(
        self,
        step: int,
        state: Any,
        metadata: Mapping[str, Any],
        tokenizer: Mapping[str, str],
        eval_kl: float | None = None,
    ) -> None:
        """Start an async save at ``step``; ``eval_kl`` (if this step was evaluated) ranks it
        for best-checkpoint retention. Refuses a non-finite state. Older steps outside the
        newest ``keep`` and the best are deleted, but the newest committed one only once
        ``step`` has committed (a save cut short must leave a checkpoint to resume from)."""
        if self.read_only:
            raise RuntimeError(f"{self.directory} was opened read-only")
        if not tree_is_finite(state):
            raise FloatingPointError(
                f"refusing to checkpoint a non-finite train state at step {step}"
            )
        self.manager.wait_until_finished()  # every earlier step is committed from here on
        committed = self.steps()
        self.eval_kl[step] = None if eval_kl is None else float(eval_kl)
        self._prune(protect=committed[-1:])
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                metadata=ocp.args.JsonSave({**metadata, "eval_kl": self.eval_kl[step]}),
                tokenizer=ocp.args.JsonSave(dict(tokenizer)),
            ),
            force=True,
        )

    def _prune(self, protect: list[int]) -> None:
        kept = steps_to_keep(self.eval_kl, self.keep, self.keep_best) | set(protect)
        for step in sorted(set(self.eval_kl) - kept):
            self.manager.delete(step)
            del self.eval_kl[step]

    def restore_newest(
        self, abstract_state: Any, only_step: int | None = None
    ) -> tuple[int, Any, list[int]] | None:
        """Restore the newest checkpoint that loads completely, onto the shardings carried by
        ``abstract_state`` (ShapeDtypeStructs; the mesh may differ from the saving one;
        None restores the raw saved tree).

        Returns (step, state, damaged newer steps), or None when no checkpoint restores.
        Damaged steps are skipped with a warning naming them. ``only_step`` restores that
        step or nothing.
        """
        damaged: list[int] = []
        steps = sorted(self.eval_kl, reverse=True)
        for step in steps if only_step is None else [s for s in steps if s == only_step]:
            try:
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
                )
            except Exception as error:  # any failure means "not a usable checkpoint"
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
                warnings.warn(
                    f"skipping checkpoint step {step} in {self.directory}: it is incomplete or "
                    f"damaged ({reason}); trying an earlier one",
                    stacklevel=2,
                )
                damaged.append(step)
                continue
            return step, restored["state"], damaged
        return None

    def set_aside(self, steps: list[int]) -> None:
        """Rename damaged step directories to ``<step>.damaged`` (kept for inspection,
        invisible to Orbax) so the resumed run can save those steps again. Every process
        calls it; process 0 renames, and the others wait for it before they look again."""
        for step in steps:
            path = self.directory / str(step)
            if jax.process_index() == 0 and path.exists():
                path.rename(path.with_name(f"{step}.damaged"))
            self.eval_kl.pop(step, None)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("jdjudge: damaged checkpoints set aside")
        self.manager.reload()

    def close(self) -> None:
        """Wait for the last save, apply retention to it, and release Orbax's threads."""
        try:
            self.manager.wait_until_finished()
            if not self.read_only:
                self._prune(protect=[])
        finally:
            self.manager.close()

    def __enter__(self) -> RunCheckpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
