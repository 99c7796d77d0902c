"""What a compiled step needs per device, read from XLA's analyses, and whether it fits.

``Compiled.memory_analysis()`` describes one device's program (under SPMD every device runs
the same partitioned program), in bytes:

- arguments: the inputs' buffers (this device's shards of the state, the frozen base, the
  batch and the rng);
- outputs: the results' buffers (the new state's shards and the metrics);
- aliased: output bytes that reuse a donated argument's buffer (the donated train state
  updated in place), counted in both of the above but held once;
- temporaries: everything the program allocates while it runs (activations, gradients,
  optimizer scratch, collective buffers);
- generated code: the executable itself (on TPU it lives in HBM too).

So the device must hold arguments + outputs − aliased + temporaries + generated code at once
(XLA's own figure for a TPU program, which its out-of-memory error reports as the program's
HBM use; checked against ``peak_memory_in_bytes`` where the backend reports one).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

GIB = 1 << 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
# XLA:TPU's compile-time refusal. Its "HLO temporaries" figure is the whole program's need
# (arguments included: a 14 GiB argument and 2 GiB of temporaries report 16.00G).
_OOM = re.compile(
    r"required for HLO temporaries \(([\d.]+)([KMGTP]?)\).*?available HBM \(([\d.]+)([KMGTP]?)\)"
)


MEMORY_FIELDS = ("arguments", "outputs", "aliased", "temporaries", "generated_code", "total")


@dataclass(frozen=True)
class DeviceMemory:
    """One device's bytes for the compiled step (see the module docstring)."""

    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    generated_code: int

    @property
    def total(self) -> int:
        """Bytes the device holds at the step's peak (held once where donated)."""
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.generated_code

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def device_memory(compiled: Any) -> DeviceMemory:
    """The per-device sizes from ``compiled.memory_analysis()``."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError("this backend reports no memory analysis for compiled programs")
    return DeviceMemory(
        arguments=int(stats.argument_size_in_bytes),
        outputs=int(stats.output_size_in_bytes),
        aliased=int(stats.alias_size_in_bytes),
        temporaries=int(stats.temp_size_in_bytes),
        generated_code=int(stats.generated_code_size_in_bytes),
    )


def peak_bytes(compiled: Any) -> int | None:
    """XLA's own peak estimate, where the backend fills it in (0 or absent: unknown)."""
    stats = compiled.memory_analysis()
    peak = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
    return peak or None


def step_flops(compiled: Any) -> float | None:
    """FLOPs of one device's program (``cost_analysis()["flops"]``): the partitioned
    program's, so a global figure is this × the devices (checked in tests/test_plan.py)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older JAX: one dict per program
        cost = cost[0] if cost else None
    flops = None if not cost else cost.get("flops")
    return None if flops is None or flops < 0 else float(flops)


def out_of_memory(message: str) -> tuple[int, int] | None:
    """(bytes needed, bytes available) from XLA's RESOURCE_EXHAUSTED compile error, else None.
    A TPU compile refuses a program that cannot fit, so no memory analysis exists then."""
    match = _OOM.search(message)
    if match is None:
        return None
    need, need_unit, have, have_unit = match.groups()
    return int(float(need) * _UNITS[need_unit]), int(float(have) * _UNITS[have_unit])


def usable_hbm(device: Any) -> int | None:
    """What XLA lets one program use on ``device``'s chip (its HBM less what the runtime
    reserves: 15.75 of v5e's 16 GiB), read from the refusal of a program far too big for
    it. None where the backend does not refuse (CPU) or words it otherwise."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    one = NamedSharding(Mesh(np.array([device]), ("x",)), PartitionSpec())
    x = jax.ShapeDtypeStruct((1 << 14, 1 << 14), jnp.float32, sharding=one)  # 1 GiB
    huge = jax.jit(lambda a: jnp.sort(jnp.tile(a, (1 << 12, 1)), axis=0).sum())  # 4 TiB
    try:
        huge.lower(x).compile()
    except Exception as error:  # the refusal is the answer
        refused = out_of_memory(str(error))
        return None if refused is None else refused[1]
    return None


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def size(n: float) -> str:
    """GiB, or MiB below a tenth of one (a tiny model's buffers)."""
    return gib(n) if n >= GIB / 10 else f"{n / (1 << 20):.2f} MiB"


@dataclass(frozen=True)
class Verdict:
    """Whether ``need`` bytes fit in ``capacity`` (None: no budget known)."""

    need: int
    capacity: int | None

    @property
    def fits(self) -> bool | None:
        return None if self.capacity is None else self.need <= self.capacity

    @property
    def margin(self) -> int | None:
        """Bytes left over (negative: bytes short)."""
        return None if self.capacity is None else self.capacity - self.need

    def line(self) -> str:
        if self.capacity is None or self.margin is None:
            return "fits: unknown (no device memory budget: pass --hbm=GiB)"
        if self.margin >= 0:
            return (
                f"fits: yes (margin {gib(self.margin)}, {100 * self.margin / self.capacity:.0f}%)"
            )
        return f"fits: NO (short by {gib(-self.margin)})"

    def as_dict(self) -> dict[str, Any]:
        return {"fits": self.fits, "margin_bytes": self.margin, "capacity_bytes": self.capacity}
