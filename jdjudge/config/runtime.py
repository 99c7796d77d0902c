"""The sections of the config that say where and how a run executes, not what it learns: the
device mesh, joining a multi-process run, checkpoints. Declared like every other section
(``schema.py`` holds the rest and the top-level ``Config``, which includes these).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import ClassVar

from jdjudge.config.fields import key

Problems = Iterator[tuple[str, str]]  # (field, message) from a section's cross-field rules


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh has axes `data`, `fsdp` and `tensor`; their product must equal the number
    of devices. At most one axis may be `-1` ("all remaining devices")."""

    TITLE: ClassVar[str] = "Mesh"

    data: int = key(-1, "Pure data parallelism (parameters replicated), within a slice.")
    fsdp: int = key(1, "Data parallelism with parameters and optimizer state sharded over it.")
    tensor: int = key(1, "Tensor (intra-layer) parallelism.")
    dcn_data: int = key(
        1,
        "Slices the `data` axis spans (data parallelism over the data-center network, DCN): the mesh's `data` axis is then `dcn_data` × `data`, and `data`, `fsdp` and `tensor` describe one slice. Only gradients cross slices. With more than one, devices are grouped by their slice (by process on CPU and GPU).",
        ge=1,
    )

    def shape(self) -> dict[str, int]:
        """The within-slice axes (what ``sharding.make_mesh`` takes with ``dcn_data``)."""
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}

    def cross_checks(self) -> Problems:
        for axis, size in self.shape().items():
            if size != -1 and size < 1:
                yield axis, "must be >= 1, or -1 for all remaining devices"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Multi-process runs through `jax.distributed` (see docs/launch.md). Every process runs
    the same command. With nothing set, Cloud TPU VMs, GKE, Slurm and Open MPI are detected
    (as are the `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`
    variables), and a machine with none of them runs one process."""

    TITLE: ClassVar[str] = "Distributed"

    coordinator_address: str = key(
        "",
        "`host:port` of process 0's coordinator, which every process connects to; empty: detect.",
    )
    num_processes: int = key(-1, "How many processes take part; `-1`: detect.", ge=-1)
    process_id: int = key(
        -1, "This process's index, 0 to `num_processes` − 1; `-1`: detect.", ge=-1
    )
    initialization_timeout: int = key(
        300, "Seconds to wait for all processes to connect before failing.", ge=1
    )
    heartbeat_timeout: int = key(
        100,
        "Seconds without a heartbeat after which a process counts as dead; the others then stop with an error instead of waiting for it.",
        ge=1,
    )

    def cross_checks(self) -> Problems:
        if self.num_processes == 0:
            yield "num_processes", "must be >= 1, or -1 to detect"
        if 0 <= self.num_processes <= self.process_id:
            yield "process_id", f"must be below num_processes={self.num_processes}"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints live in `<workdir>/checkpoints/<step>/` and hold the train state (step,
    parameters, optimizer state, skipped-step count), the resolved config, a fingerprint of the
    data, the jdjudge version, the step's eval KL and the tokenizer files. Rerunning the same
    command with the same workdir resumes from the newest complete checkpoint (see
    docs/usage.md, "Resuming")."""

    TITLE: ClassVar[str] = "Checkpoint"

    enabled: bool = key(True, "Write checkpoints at all.")
    keep: int = key(3, "Keep the newest this many checkpoints.", ge=1)
    keep_best: bool = key(
        True,
        "Also keep the checkpoint with the lowest eval KL (among saved steps where an evaluation ran): the best over the whole run, across resumes; judge and export load it by default.",
    )
