"""Load HF safetensors checkpoints (Llama / Qwen2 / Mistral) into decoder params.

Tensors are read row block by row block straight from the files and written into their final,
already sharded buffer by a donated in-place update, so host memory peaks at about the params
plus one block: no full host copy of the model, nor of its largest tensor, ever exists. Every
name and shape is checked against the expected tree before anything is read.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jdjudge.models.config import DecoderConfig
from jdjudge.models.decoder import abstract_params
from jdjudge.models.hf_config import decoder_config_from_hf
from jdjudge.models.hub import resolve_model_dir

# safetensors dtype codes the importer reads (weights only); little-endian as the format says.
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
# Derived buffers some older checkpoints stored; recomputed from the config, so skipped.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
DEFAULT_CHUNK_BYTES = 4 << 20  # Measured: 1-8 MiB all read ~350 MB/s from page cache.


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One HF tensor and where it lands in the param tree."""

    name: str  # HF key, e.g. "model.layers.3.mlp.up_proj.weight".
    path: tuple[str, ...]  # Param path, e.g. ("layers_3", "mlp", "up_proj", "kernel").
    layer: int | None  # Index on the stacked layer axis (scan layout), else None.
    transpose: bool  # HF stores Linear weights [out, in]; kernels are [in, out].
    hf_shape: tuple[int, ...]


class TensorSource(Protocol):
    """Named tensors in HF layout, readable a block of leading-axis rows at a time."""

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]: ...  # name -> (shape, dtype)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray: ...


def hf_name(path: tuple[str, ...]) -> tuple[str, bool]:
    """(HF key, transpose?) for an unrolled param path; ValueError for foreign params."""
    leaf = path[-1]
    if path == ("embed_tokens", "embedding"):
        return "model.embed_tokens.weight", False
    if path == ("lm_head", "kernel"):
        return "lm_head.weight", True
    if path == ("norm", "scale"):
        return "model.norm.weight", False
    if path[0].startswith("layers_") and leaf in ("kernel", "bias", "scale"):
        index = path[0].removeprefix("layers_")
        suffix = "bias" if leaf == "bias" else "weight"
        return f"model.layers.{index}.{'.'.join(path[1:-1])}.{suffix}", leaf == "kernel"
    raise ValueError(f"param {'/'.join(path)} has no HF counterpart")


def tensor_specs(cfg: DecoderConfig) -> list[TensorSpec]:
    """Every HF tensor the decoder's param tree needs, in param-tree order."""
    specs = []
    for path, leaf in flatten_dict(abstract_params(cfg)).items():
        if path[0] == "layers":  # Scan layout: one HF tensor per layer.
            rows = [(f"layers_{i}", i) for i in range(cfg.num_layers)]
            shape = tuple(leaf.shape[1:])
        else:
            rows, shape = [(path[0], None)], tuple(leaf.shape)
        for head, layer in rows:
            name, transpose = hf_name((head, *path[1:]))
            hf_shape = shape[::-1] if transpose else shape
            specs.append(TensorSpec(name, tuple(path), layer, transpose, hf_shape))
    return specs


def check_tensors(
    specs: list[TensorSpec], available: Mapping[str, tuple], ignored: frozenset[str] = frozenset()
) -> None:
    """One ValueError naming every missing, unexpected, mis-shaped or unreadable tensor."""
    wanted = {spec.name: spec.hf_shape for spec in specs}
    found = {name: (tuple(shape), code) for name, (shape, code) in available.items()}
    skip = lambda name: name in ignored or name.endswith(IGNORED_SUFFIXES)  # noqa: E731
    problems = {
        "missing tensors": [name for name in wanted if name not in found],
        "unexpected": [name for name in found if name not in wanted and not skip(name)],
        "shape mismatch": [
            f"{name} (expected {shape}, got {found[name][0]})"
            for name, shape in wanted.items()
            if name in found and found[name][0] != shape
        ],
        "unsupported dtype": [
            f"{name} ({found[name][1]})"
            for name in wanted
            if name in found and found[name][1] not in SAFETENSORS_DTYPES
        ],
    }
    message = "; ".join(f"{label}: {_short(items)}" for label, items in problems.items() if items)
    if message:
        raise ValueError(message)


def params_from_source(
    source: TensorSource,
    cfg: DecoderConfig,
    shardings: Any = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    only: Collection[tuple[str, ...]] | None = None,
) -> dict:
    """Params for `cfg` (unrolled or scanned layout), each leaf placed in its sharding; with
    `only`, just those param paths are read (the checks still cover every tensor)."""
    specs, available = tensor_specs(cfg), source.shapes()
    # A tied model's head is the embedding: a stored copy (a torch state dict has one) is
    # unused, as in transformers.
    check_tensors(specs, available, frozenset({"lm_head.weight"} if cfg.tie_embeddings else ()))
    abstract = flatten_dict(abstract_params(cfg))
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        placement = dict.fromkeys(abstract, device)
    else:
        placement = flatten_dict(shardings)
    by_path: dict[tuple[str, ...], list[TensorSpec]] = {}
    for spec in specs:
        by_path.setdefault(spec.path, []).append(spec)
    out = {}
    for path, leaf in abstract.items():
        if only is not None and path not in only:
            continue
        buf = jnp.zeros(leaf.shape, leaf.dtype, device=placement[path])
        for spec in by_path[path]:
            for start, stop in _row_blocks(spec, available[spec.name][1], chunk_bytes):
                block = source.read_rows(spec.name, start, stop)
                write = _writer(placement[path], spec.transpose, spec.layer is not None)
                # Wait, so at most one block is in flight: async dispatch would otherwise
                # let the reads run ahead and hold many host blocks at once.
                buf = write(buf, block, start, spec.layer or 0).block_until_ready()
                del block
        out[path] = buf
    return unflatten_dict(out)


def load_hf_checkpoint(
    model_dir: str | os.PathLike,
    decoder_cfg: DecoderConfig,
    shardings: Any = None,
    only: Collection[tuple[str, ...]] | None = None,
) -> dict:
    """Params from `model.safetensors` or a sharded `model.safetensors.index.json`.

    `shardings`: a pytree of `jax.sharding.Sharding` shaped like the params (None: the first
    device). Host memory peaks at about the params plus a few ~4 MiB blocks. `only`: just
    those param paths (e.g. the frozen lm_head of a judge that trains its label columns).
    """
    source = SafetensorsSource(Path(model_dir))
    return params_from_source(source, decoder_cfg, shardings, only=only)


def load_hf_model(
    path_or_hub_id: str | os.PathLike,
    dtype: str = "bfloat16",
    param_dtype: str | None = None,
    shardings_fn: Callable[[dict], Any] | None = None,
    max_seq_len: int | None = None,
    revision: str | None = None,
    only: Collection[tuple[str, ...]] | None = None,
    **overrides: Any,
) -> tuple[DecoderConfig, dict]:
    """(DecoderConfig, params) from a local HF directory or a hub id.

    `shardings_fn` maps the abstract param tree to shardings, e.g.
    `lambda a: tree_shardings(a, partition_rules(), mesh)`; `overrides` (scan_layers, remat)
    go to the DecoderConfig; `only` reads just those param paths.
    """
    model_dir = resolve_model_dir(path_or_hub_id, revision)
    config = json.loads((model_dir / "config.json").read_text())
    cfg = decoder_config_from_hf(config, dtype, param_dtype, max_seq_len, **overrides)
    shardings = shardings_fn(abstract_params(cfg)) if shardings_fn is not None else None
    return cfg, load_hf_checkpoint(model_dir, cfg, shardings, only)


def load_tokenizer(path_or_hub_id: str | os.PathLike, revision: str | None = None) -> Any:
    """The checkpoint's tokenizer; remote code is never run."""
    import transformers

    model_dir = resolve_model_dir(path_or_hub_id, revision)
    return transformers.AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)


class SafetensorsSource:
    """Tensors of one checkpoint directory, read with plain file reads (no mmap residency).

    The safetensors format is an 8-byte little-endian header length, a JSON header (dtype,
    shape, byte offsets per tensor) and the raw little-endian data; reading it directly gives
    row-block reads and bfloat16 (through ml_dtypes), which safe_open's numpy mode lacks.
    """

    def __init__(self, model_dir: Path) -> None:
        self.entries: dict[str, tuple[Path, int, tuple[int, ...], str]] = {}
        for file in checkpoint_files(model_dir):
            data_start, header = read_header(file)
            for name, info in header.items():
                if name != "__metadata__":
                    start = data_start + int(info["data_offsets"][0])
                    self.entries[name] = (file, start, tuple(info["shape"]), info["dtype"])

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {name: (shape, dtype) for name, (_, _, shape, dtype) in self.entries.items()}

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        file, offset, shape, code = self.entries[name]
        dtype = SAFETENSORS_DTYPES[code]
        row = math.prod(shape[1:])
        flat = np.fromfile(
            file,
            dtype=dtype,
            count=(stop - start) * row,
            offset=offset + start * row * dtype.itemsize,
        )
        return flat.reshape((stop - start, *shape[1:]))


class ArraySource:
    """In-memory tensors (e.g. a torch state dict converted to numpy) as a TensorSource."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.arrays = {name: np.asarray(a) for name, a in arrays.items()}

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        codes = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
        return {n: (a.shape, codes.get(a.dtype, str(a.dtype))) for n, a in self.arrays.items()}

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.arrays[name][start:stop]


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint, from its index when sharded."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(p.name for p in model_dir.glob("*.bin")) if model_dir.is_dir() else []
    hint = f" (found {', '.join(found)}: convert to safetensors)" if found else ""
    raise FileNotFoundError(
        f"no model.safetensors or model.safetensors.index.json in {model_dir}{hint}"
    )


def read_header(file: Path) -> tuple[int, dict[str, Any]]:
    """(offset of the data section, header dict) of one safetensors file."""
    with open(file, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return 8 + size, header


def _row_blocks(spec: TensorSpec, code: str, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """[start, stop) blocks of the leading HF axis, each at most ~chunk_bytes."""
    rows = spec.hf_shape[0]
    row_bytes = math.prod(spec.hf_shape[1:]) * SAFETENSORS_DTYPES[code].itemsize
    step = max(1, chunk_bytes // max(1, row_bytes))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


@functools.cache
def _writer(sharding: jax.sharding.Sharding, transpose: bool, stacked: bool) -> Callable:
    """Jitted in-place write of one HF row block into its (donated) destination buffer."""

    def write(buf: jax.Array, block: jax.Array, start: jax.Array, layer: jax.Array) -> jax.Array:
        block = block.astype(buf.dtype)
        if transpose:  # Rows of [out, in] are columns of the [in, out] kernel.
            block, index = block.T, (0, start)
        else:
            index = (start,) + (0,) * (block.ndim - 1)
        if stacked:
            block, index = block[None], (layer, *index)
        return jax.lax.dynamic_update_slice(buf, block, index)

    return jax.jit(write, out_shardings=sharding, donate_argnums=0)


def _short(items: list[str], limit: int = 20) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
