"""Joining a multi-process run: ``jax.distributed`` before any other JAX call.

Every process of a run executes the same command. Where the processes find each other comes,
in this order, from the ``distributed.*`` config keys, from JAX's own variables
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), or from the cluster
JAX detects (Cloud TPU VMs and GKE from their metadata, Slurm and Open MPI from their
variables). A machine with none of these runs one process and initializes nothing, so the
laptop and the pod run the same program.

Once joined, the coordination service watches every process's heartbeat: when one dies, the
others are stopped with an error after ``distributed.heartbeat_timeout`` seconds instead of
waiting for it in a collective forever.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jdjudge.config.fields import ConfigError
from jdjudge.config.schema import DistributedConfig
from jdjudge.entry import RunFailed

# JAX reads JAX_COORDINATOR_ADDRESS itself; the count and the id it does not, so they are
# read here, beside the config keys, for launchers that set variables rather than flags.
ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


@dataclass(frozen=True)
class Join:
    """How this process joins: ``explicit`` arguments (None: detect that one), or ``auto``
    (all detected by JAX's cluster environments; nothing detected means one process)."""

    auto: bool
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r}: must be an integer") from None


def plan_join(cfg: DistributedConfig, env: Mapping[str, str] | None = None) -> Join | None:
    """What ``initialize`` will do, as data (None: a single process, nothing to join)."""
    env = os.environ if env is None else env
    address = cfg.coordinator_address or env.get(ENV_ADDRESS, "").strip() or None
    count = cfg.num_processes if cfg.num_processes != -1 else _env_int(env, ENV_COUNT)
    index = cfg.process_id if cfg.process_id != -1 else _env_int(env, ENV_ID)
    if count == 1:
        return None
    if address is None and count is None and index is None:
        return Join(auto=True)
    return Join(auto=False, coordinator_address=address, num_processes=count, process_id=index)


def initialize(cfg: DistributedConfig, env: Mapping[str, str] | None = None) -> None:
    """Join the run's other processes, once, before JAX's backends start.

    Raises ConfigError (a one-line CLI error) when explicit settings are incomplete and
    nothing can fill them in, or come after JAX's backends started. Detection alone, in a
    process where JAX already runs (a caller of ``train.run``), means one process.
    """
    join = plan_join(cfg, env)
    if join is None or jax.distributed.is_initialized():
        return
    timeouts: dict[str, Any] = {
        "initialization_timeout": cfg.initialization_timeout,
        "heartbeat_timeout_seconds": cfg.heartbeat_timeout,
    }
    if join.auto:
        try:
            jax.distributed.initialize(**timeouts)
        except ValueError as error:
            if "coordinator_address should be defined" in str(error):
                return  # no cluster detected: one process, as on a laptop
            raise ConfigError(f"distributed: {error}") from None
        except RuntimeError as error:
            if "must be called before" in str(error):
                return  # JAX already runs in this process (a library caller): one process
            raise ConfigError(f"distributed: {error}") from None
        return
    try:
        jax.distributed.initialize(
            coordinator_address=join.coordinator_address,
            num_processes=join.num_processes,
            process_id=join.process_id,
            **timeouts,
        )
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"distributed: {error} (set distributed.coordinator_address, "
            "distributed.num_processes and distributed.process_id, or run under a launcher "
            "JAX detects)"
        ) from None
    except RuntimeError as error:
        raise ConfigError(f"distributed: {error}") from None


def _digest(value: Any) -> int:
    text = json.dumps(value, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:7], "little")  # fits an int64


def check_agreement(values: Mapping[str, Any]) -> None:
    """RunFailed unless every process holds the same ``values`` (the data's fingerprint, the
    step count, the step resumed from, …): processes that disagree would each train a
    different run while their collectives pair up step by step. One gather, at the start."""
    if jax.process_count() == 1:
        return
    names = sorted(values)
    mine = np.array([_digest(values[name]) for name in names], dtype=np.int64)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, len(names))
    differing = [name for i, name in enumerate(names) if len(set(every[:, i].tolist())) > 1]
    if differing:
        who = {n: [p for p in range(len(every)) if every[p, names.index(n)] != every[0, names.index(n)]]
               for n in differing}  # fmt: skip
        detail = "; ".join(f"{n} (processes {who[n]} differ from process 0)" for n in differing)
        raise RunFailed(
            f"the {len(every)} processes disagree on {detail}: every process must see the same "
            "config, data files and workdir"
        )
