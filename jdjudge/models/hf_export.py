"""Write decoder params as an HF checkpoint that `AutoModelForCausalLM.from_pretrained` loads.

Output is torch [out, in] layout in safetensors (one file, or shards plus an index), tied
models without `lm_head.weight`, plus `config.json` and the tokenizer's files. Tensors are
streamed one at a time (offsets are known from shapes up front), so host memory stays at one
tensor beyond the params.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax.traverse_util import flatten_dict

from jdjudge.models.config import DecoderConfig
from jdjudge.models.hf_config import hf_config_from_decoder
from jdjudge.models.hf_import import TensorSpec, tensor_specs

EXPORT_DTYPES: dict[str, tuple[np.dtype, str]] = {
    "float32": (np.dtype("<f4"), "F32"),
    "bfloat16": (np.dtype(ml_dtypes.bfloat16), "BF16"),
    "float16": (np.dtype("<f2"), "F16"),
}
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
_SIZE_UNITS["GIB"] = 2**30


def export_hf(
    params: dict,
    decoder_cfg: DecoderConfig,
    out_dir: str | os.PathLike,
    tokenizer: Any = None,
    model_type: str = "llama",
    dtype: str = "float32",
    max_shard_size: int | str = "5GB",
) -> Path:
    """Write config.json, model.safetensors (or shards + index) and tokenizer files."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported (supported: {list(EXPORT_DTYPES)})")
    config = hf_config_from_decoder(decoder_cfg, model_type)
    config["dtype"] = dtype
    if tokenizer is not None:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            config[key] = getattr(tokenizer, key, None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = tensor_specs(decoder_cfg)
    _check_params(params, decoder_cfg)
    flat = flatten_dict(params)
    np_dtype = EXPORT_DTYPES[dtype][0]
    shards = shard_specs(specs, np_dtype.itemsize, parse_size(max_shard_size))
    names = _shard_names(len(shards))
    for file_name, shard in zip(names, shards, strict=True):
        write_safetensors(out / file_name, shard, lambda s: _host_tensor(flat, s, np_dtype), dtype)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(_nbytes(s, np_dtype.itemsize) for s in specs)},
            "weight_map": {
                s.name: n for n, shard in zip(names, shards, strict=True) for s in shard
            },
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def write_safetensors(
    path: Path, specs: list[TensorSpec], tensor_fn: Callable[[TensorSpec], np.ndarray], dtype: str
) -> None:
    """Stream tensors into one safetensors file: header from shapes, then data in order."""
    np_dtype, code = EXPORT_DTYPES[dtype]
    itemsize = np_dtype.itemsize
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        size = _nbytes(spec, itemsize)
        header[spec.name] = {
            "dtype": code,
            "shape": list(spec.hf_shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # Data section starts 8-byte aligned.
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for spec in specs:
            tensor = np.ascontiguousarray(tensor_fn(spec), dtype=np_dtype)
            f.write(tensor.tobytes())
            del tensor


def shard_specs(specs: list[TensorSpec], itemsize: int, max_bytes: int) -> list[list[TensorSpec]]:
    """Greedy, order-preserving split into files of at most max_bytes (a bigger tensor alone)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        nbytes = _nbytes(spec, itemsize)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return shards


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "5GB", "200MB", "64MiB"."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", str(size).upper())
    if not match:
        raise ValueError(f"max_shard_size {size!r} is not a size like '5GB' or an int")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2) or ""])


def _host_tensor(flat: dict, spec: TensorSpec, np_dtype: np.dtype) -> np.ndarray:
    """One HF tensor on the host, in torch layout and the export dtype."""
    value = flat[spec.path]
    if spec.layer is not None:
        value = value[spec.layer]
    host = np.asarray(jax.device_get(value)).astype(np_dtype)
    return host.T if spec.transpose else host


def _check_params(params: dict, cfg: DecoderConfig) -> None:
    """Params must be exactly the tree `cfg` describes (e.g. not a LoRA-wrapped one)."""
    from jdjudge.models.decoder import abstract_params

    want = {p: tuple(x.shape) for p, x in flatten_dict(abstract_params(cfg)).items()}
    got = {p: tuple(np.shape(x)) for p, x in flatten_dict(params).items()}
    if want != got:
        diff = sorted("/".join(p) for p in set(want) ^ set(got))
        diff += sorted("/".join(p) for p in set(want) & set(got) if want[p] != got[p])
        raise ValueError(f"params do not match the decoder config at: {', '.join(diff[:20])}")


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def _nbytes(spec: TensorSpec, itemsize: int) -> int:
    return math.prod(spec.hf_shape) * itemsize
