"""Accelerator names -> the devices a plan compiles for, and each device's memory.

Two spellings name a TPU slice: the topology form ``v5e:4x4`` (chips along each axis of the
slice's grid) and the Cloud accelerator-type form ``v5e-16``. The number in the second is
TensorCores for v4 and v5p (two per chip: ``v4-8`` and ``v5p-8`` are 2x2x1 = 4 chips) and chips
for v5e and v6e (one TensorCore each: ``v5e-16`` is 4x4 = 16 chips). Either way the plan's
devices are chips, as JAX sees them on the real slice: a v4 or v5p chip's two TensorCores run
as one "megacore" device (libtpu's ``v4:2x2x1`` without ``chip_config_name="megacore"`` gives
8 one-core devices of half a chip's memory each, which is not what a v4-8 runs).

The devices come from libtpu's compile-only topology (``jax.experimental.topologies``): no TPU
is needed, only the ``libtpu`` package. Where it is not installed the plan falls back to as
many simulated CPU devices (``jax_num_cpu_devices``), which must be set before JAX starts its
backends, so availability is decided from the installed packages alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import jax

GIB = 1 << 30
# HBM per chip (per JAX device), from the Cloud TPU system architecture pages.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
# Chip name in libtpu's topology strings, and whether the slice's grid is 3-D.
_LIBTPU_NAMES = {"v4": "v4", "v5e": "v5e", "v5p": "v5", "v6e": "v6e"}
_THREE_D = frozenset({"v4", "v5p"})
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e", "v6lite": "v6e"}
CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
KNOWN = (*HBM_GIB, "cpu")


class TopologyError(ValueError):
    """A topology name that names no known slice (the message lists what is known)."""


@dataclass(frozen=True)
class TopologySpec:
    """One slice's chip grid (``shape``), repeated ``num_slices`` times."""

    family: str  # a key of HBM_GIB, or "cpu"
    shape: tuple[int, ...]  # chips along each grid axis (cpu: (devices,))
    num_slices: int = 1

    @property
    def name(self) -> str:
        return f"{self.family}:{'x'.join(map(str, self.shape))}"

    @property
    def devices_per_slice(self) -> int:
        return math.prod(self.shape)

    @property
    def num_devices(self) -> int:
        return self.devices_per_slice * self.num_slices

    @property
    def is_tpu(self) -> bool:
        return self.family != "cpu"

    @property
    def hbm_bytes(self) -> int | None:
        """Memory of one device (a chip); None for CPU devices, which have no fixed budget."""
        return HBM_GIB[self.family] * GIB if self.is_tpu else None

    @property
    def host_bounds(self) -> tuple[int, int, int]:
        """One host's chips: 2x2x1 for v4 and v5p; for v5e and v6e the whole slice up to 8
        chips (one 8-chip VM), else 2x2 (4-chip VMs); CPU: one host."""
        grid = (*self.shape, 1, 1)[:3]
        if not self.is_tpu or (self.family not in _THREE_D and self.devices_per_slice <= 8):
            return grid
        return tuple(min(s, b) for s, b in zip(grid, (2, 2, 1), strict=True))  # type: ignore[return-value]

    @property
    def hosts(self) -> int:
        """Processes a run on these slices has (``jax.process_count()`` there); simulated
        CPU devices are one process."""
        if not self.is_tpu:
            return 1
        return self.num_slices * self.devices_per_slice // math.prod(self.host_bounds)

    def libtpu_args(self) -> tuple[str, dict[str, object]]:
        """``get_topology_desc``'s topology name and keyword options for this slice (a v4 or
        v5p chip's two cores as one "megacore" device)."""
        name = f"{_LIBTPU_NAMES[self.family]}:{'x'.join(map(str, self.shape))}"
        options: dict[str, object] = {"chips_per_host_bounds": self.host_bounds}
        if self.family in _THREE_D:
            options["chip_config_name"] = "megacore"
        if self.num_slices > 1:
            options["num_slices"] = self.num_slices
        return name, options


def _power_of_two_grid(chips: int, axes: int) -> tuple[int, ...] | None:
    """The Cloud grid of ``chips`` (a power of two) chips: 2-D ``a x b`` with b = a or 2a;
    3-D from 2x2x1 up, doubling the smallest axis (the last of equals): 2x2x2, 2x2x4, 2x4x4."""
    if chips < 1 or chips & (chips - 1):
        return None
    k = chips.bit_length() - 1
    if axes == 2:
        return (1 << (k // 2), 1 << (k - k // 2))
    if chips < 4:
        return None
    grid = [2, 2, 1]
    for _ in range(k - 2):
        smallest = min(grid)
        last = max(i for i, g in enumerate(grid) if g == smallest)
        grid[last] *= 2
    return tuple(grid)


def parse_topology(name: str, num_slices: int = 1) -> TopologySpec:
    """``v5e:4x4``, ``v5e-16``, ``v4-8``, ``v5p:2x2x2``, ``cpu:8`` -> the slice they name."""
    if num_slices < 1:
        raise TopologyError(f"--num_slices={num_slices}: must be >= 1")
    text = name.strip().lower()
    match = re.fullmatch(r"([a-z0-9]+?)(?::([0-9x]+)|-([0-9]+))", text)
    family = ALIASES.get(match.group(1), match.group(1)) if match else None
    known = ", ".join(f"{k}:<grid>" if k != "cpu" else "cpu:<devices>" for k in KNOWN)
    if match is None or family not in KNOWN:
        raise TopologyError(
            f"unknown topology {name!r}; known: {known} (or <name>-<size>, e.g. v5e-16, v4-8; "
            f"v5litepod = v5e)"
        )
    grid_text, size_text = match.group(2), match.group(3)
    if family == "cpu":
        count_text = grid_text or size_text or ""
        count = int(count_text) if count_text.isdigit() else 0
        if count < 1:
            raise TopologyError(f"topology {name!r}: expected cpu:<devices>, e.g. cpu:8")
        return TopologySpec("cpu", (count,), num_slices)
    axes = 3 if family in _THREE_D else 2
    if grid_text is not None:
        dims = tuple(int(d) for d in grid_text.split("x") if d)
        if len(dims) != axes or "" in grid_text.split("x") or min(dims) < 1:
            example = "2x2x1" if axes == 3 else "4x4"
            raise TopologyError(f"topology {name!r}: {family} takes a {axes}-D grid, e.g. "
                                f"{family}:{example}")  # fmt: skip
        return TopologySpec(family, dims, num_slices)
    size = int(size_text)
    cores = CORES_PER_CHIP[family]
    grid = _power_of_two_grid(size // cores, axes) if size % cores == 0 else None
    if grid is None:
        unit = "TensorCores (2 per chip)" if cores == 2 else "chips"
        raise TopologyError(
            f"topology {name!r}: the size of {family}-N counts {unit} and must give a "
            f"power-of-two slice; name the grid instead, e.g. {family}:"
            f"{'4x4x12' if axes == 3 else '8x16'}"
        )
    return TopologySpec(family, grid, num_slices)


def libtpu_available() -> bool:
    """Whether libtpu is installed, decided without starting any JAX backend. A namespace
    package (a stray ``libtpu/`` folder on the path) has no origin and does not count."""
    spec = importlib.util.find_spec("libtpu")
    return spec is not None and spec.origin is not None


def cpu_devices(count: int) -> list[jax.Device]:
    """``count`` simulated CPU devices. The count takes effect only before JAX's backends
    start; after that (a caller that already used JAX) the existing devices must suffice."""
    jax.config.update("jax_platforms", "cpu")
    with contextlib.suppress(RuntimeError):  # backends already started: keep what there is
        jax.config.update("jax_num_cpu_devices", count)
    devices = jax.devices("cpu")
    if len(devices) < count:
        raise TopologyError(
            f"{count} CPU devices are needed, but JAX already started with {len(devices)}"
        )
    return list(devices[:count])


def tpu_devices(spec: TopologySpec) -> Sequence[jax.Device]:
    """The compile-only TPU devices of ``spec`` (libtpu's topology; no TPU attached). JAX
    itself stays on the CPU backend, so no TPU runtime is started or probed."""
    from jax.experimental.topologies import get_topology_desc

    jax.config.update("jax_platforms", "cpu")  # no effect once started: harmless
    name, options = spec.libtpu_args()
    try:
        return get_topology_desc(name, "tpu", **options).devices
    except Exception as error:  # libtpu's INVALID_ARGUMENT for a grid it does not know
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise TopologyError(f"topology {spec.name!r}: libtpu refused it ({first})") from None


def hosts(devices: Sequence[jax.Device]) -> int:
    """The processes libtpu's topology spreads its devices over (one per host)."""
    return len({d.process_index for d in devices})
