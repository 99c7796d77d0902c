"""Run the production step on 8 simulated devices (data=2, fsdp=2, tensor=2) and on one, full
fine-tuning and LoRA, and print the largest differences as JSON.

Its own process because the device count is fixed when JAX starts (the test suite runs on 4):
``XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.mesh_parity``.
"""

from __future__ import annotations

import json

import jax
import numpy as np

from tests.production import tiny_config, train_steps

ONE = {"data": 1, "fsdp": 1, "tensor": 1}
EIGHT = {"data": 2, "fsdp": 2, "tensor": 2}


def max_differences(lora_rank: int) -> dict[str, float]:
    config = tiny_config(lora_rank=lora_rank)
    one, eight = train_steps(ONE, config), train_steps(EIGHT, config)
    split = [
        str(s.spec) for s in jax.tree.leaves(eight["state_shardings"]) if s.spec != ()
    ]  # the 8-device state really is partitioned
    param_diff = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(
            jax.tree.leaves(one["params"]), jax.tree.leaves(eight["params"]), strict=True
        )
    )
    moved = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(
            jax.tree.leaves(one["params"]), jax.tree.leaves(one["initial"]), strict=True
        )
    )
    return {
        "moved": moved,
        "loss": float(np.max(np.abs(one["losses"] - eight["losses"]))),
        "params": param_diff,
        "losses": one["losses"].tolist(),
        "partitioned_leaves": sum("fsdp" in s or "tensor" in s for s in split),
    }


if __name__ == "__main__":
    assert jax.device_count() == 8, f"needs 8 devices, got {jax.device_count()}"
    print(json.dumps({"full": max_differences(0), "lora": max_differences(4)}))
