"""Device meshes and partition rules: sharding is data, not code scattered through the model.

The mesh has three named axes: ``data`` (pure data parallelism), ``fsdp`` (data parallel with
parameters sharded across it) and ``tensor`` (intra-layer model parallelism). Parameters are
placed by regex rules over their "/"-joined tree paths; batches are split over
``("data", "fsdp")`` on their leading axis. The same program runs on one CPU (a 1×1×1 mesh)
and on a pod slice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Turn ``{"data": -1, "fsdp": 1, "tensor": 1}`` into concrete sizes for ``num_devices``.

    At most one axis may be -1 ("whatever is left"); the product must equal the device count,
    because a mesh that silently uses fewer devices wastes hardware without telling anyone.
    """
    sizes = [int(shape[name]) for name in MESH_AXES]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise ValueError(
            f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes, strict=True))}"
        )
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh: axis sizes must be positive or -1, got {sizes}")
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh: {num_devices} devices are not divisible by the fixed axes (product {fixed})"
            )
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh: shape {dict(zip(MESH_AXES, sizes, strict=True))} needs {math.prod(sizes)} devices, "
            f"but {num_devices} are available"
        )
    return tuple(sizes)


def make_mesh(
    shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None, dcn_data: int = 1
) -> Mesh:
    """An auto-sharded mesh over all (or the given) devices.

    ``dcn_data`` > 1 spans the ``data`` axis over that many slices (a hybrid mesh): ``shape``
    then describes one slice, and the ``data`` axis holds ``dcn_data`` × ``shape["data"]``
    devices ordered slice by slice, so only the data-parallel gradient reduction crosses the
    slower network. Slices are the devices' ``slice_index`` on TPU and their process on
    platforms without one (CPU, GPU).
    """
    devices = list(devices) if devices is not None else jax.devices()
    if dcn_data < 1 or len(devices) % dcn_data:
        raise ValueError(
            f"mesh: dcn_data={dcn_data} must divide the {len(devices)} devices into equal slices"
        )
    sizes = resolve_mesh_shape(shape, len(devices) // dcn_data)
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if dcn_data == 1:
        return jax.make_mesh(sizes, MESH_AXES, axis_types=axis_types, devices=devices)
    slices = {getattr(d, "slice_index", None) for d in devices}
    by_process = None in slices or len(slices) != dcn_data  # no (usable) slice ids: processes
    if by_process and len({d.process_index for d in devices}) != dcn_data:
        raise ValueError(
            f"mesh: dcn_data={dcn_data}, but the devices belong to {len(slices)} slice(s) and "
            f"{len({d.process_index for d in devices})} process(es)"
        )
    grid = mesh_utils.create_hybrid_device_mesh(
        sizes, (dcn_data, 1, 1), devices, process_is_granule=by_process
    )
    return Mesh(grid, MESH_AXES, axis_types=axis_types)


def tree_paths(tree: Any) -> list[str]:
    """'/'-joined key paths of every leaf, the names partition rules match against."""
    return [_path_str(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _path_str(path: tuple) -> str:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        else:
            parts.append(str(key))
    return "/".join(parts)


def spec_for(
    path: str, shape: tuple[int, ...], rules: Sequence[tuple[str, tuple]], mesh: Mesh
) -> PartitionSpec:
    """The partition spec of one parameter: the first matching rule, trimmed to what fits.

    A dimension whose size the mesh axis does not divide is replicated instead, so a tiny
    model still runs on a big mesh (its small tensors are simply not split).
    """
    if not shape:
        return PartitionSpec()  # scalars (step counters, optimizer counts) are replicated
    matches = [(pattern, axes) for pattern, axes in rules if re.search(pattern, path)]
    if not matches:
        raise ValueError(f"no partition rule matches parameter {path!r}")
    pattern, axes = matches[0]
    if len(axes) != len(shape):
        raise ValueError(f"partition rule {pattern!r} has {len(axes)} axes, {path} has {shape}")
    fitted = []
    for dim, axis in zip(shape, axes, strict=True):
        size = 1 if axis is None else int(np.prod([mesh.shape[a] for a in _as_tuple(axis)]))
        fitted.append(axis if size > 1 and dim % size == 0 else None)
    return PartitionSpec(*fitted)


def _as_tuple(axis: str | tuple[str, ...]) -> tuple[str, ...]:
    return (axis,) if isinstance(axis, str) else tuple(axis)


def tree_shardings(abstract_tree: Any, rules: Sequence[tuple[str, tuple]], mesh: Mesh) -> Any:
    """NamedShardings for a pytree of abstract arrays (e.g. from jax.eval_shape).

    Rules match by ``re.search``, so optimizer moments (paths like ``opt_state/.../mu/<param>``)
    follow the sharding of the parameter they mirror.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_tree)
    shardings = [
        NamedSharding(mesh, spec_for(_path_str(path), tuple(leaf.shape), rules, mesh))
        for path, leaf in flat
    ]
    return jax.tree_util.tree_unflatten(treedef, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def packed_rows_multiple(mesh: Mesh, processes: int) -> int:
    """What a packed batch's row count must be a multiple of: every data-parallel device gets
    whole rows, and every process an equal share (``sources.process_rows``)."""
    return math.lcm(data_parallel_size(mesh), processes)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble a global batch from this process's slice (one host: the whole batch)."""
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, value)
        for key, value in local_batch.items()
    }
