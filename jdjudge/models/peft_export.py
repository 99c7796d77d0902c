"""Export LoRA adapters as a PEFT adapter directory (loadable by ``peft.PeftModel``).

PEFT stores ``base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_A.weight`` [r, in]
and ``...lora_B.weight`` [out, r] (torch layouts, the transposes of our A [in, r], B [r, out]),
with the scale alpha / r taken from ``adapter_config.json``. Checked against peft 0.21's own
``save_pretrained`` in tests/test_lora.py. Needs no torch: safetensors is written from numpy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from jdjudge.config.fields import validate
from jdjudge.config.schema import LoraConfig
from jdjudge.models.lora import adapter_pairs

# The HF submodule each projection lives in.
GROUP = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}
PEFT_PREFIX = "base_model.model.model.layers"
EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_LAYER = re.compile(r"layers_(\d+)")


def _hf_module_names(path: tuple[str, ...], a_ndim: int, num_stacked: int) -> list[str]:
    """PEFT module names for one adapter: one name per layer (several when stacked)."""
    proj = path[-1]
    if proj not in GROUP or len(path) < 2 or path[-2] != GROUP[proj]:
        raise ValueError(f"adapter {'/'.join(path)} is not a .../{GROUP.get(proj, '?')}/{proj}")
    stem = f"{GROUP[proj]}.{proj}"
    if a_ndim == 3:  # scanned layout: the leading axis is the layer index
        return [f"{PEFT_PREFIX}.{i}.{stem}" for i in range(num_stacked)]
    layer = [int(m.group(1)) for part in path if (m := _LAYER.fullmatch(part))]
    if a_ndim != 2 or len(layer) != 1:
        raise ValueError(f"adapter {'/'.join(path)}: cannot tell its layer index")
    return [f"{PEFT_PREFIX}.{layer[0]}.{stem}"]


def peft_state_dict(adapters: Mapping[str, Any], dtype: str = "float32") -> dict[str, np.ndarray]:
    """PEFT's safetensors content. Adapters must be host-addressable (multi-host: gather first,
    e.g. ``jax.experimental.multihost_utils.process_allgather``, and write on one process)."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype must be one of {tuple(EXPORT_DTYPES)}, got {dtype!r}")
    out: dict[str, np.ndarray] = {}
    for path, (a, b) in adapter_pairs(adapters).items():
        a_np, b_np = np.asarray(a, np.float32), np.asarray(b, np.float32)
        names = _hf_module_names(path, a_np.ndim, a_np.shape[0])
        a_layers = a_np if a_np.ndim == 3 else a_np[None]
        b_layers = b_np if b_np.ndim == 3 else b_np[None]
        for name, a_i, b_i in zip(names, a_layers, b_layers, strict=True):
            for key, value in ((f"{name}.lora_A.weight", a_i), (f"{name}.lora_B.weight", b_i)):
                if key in out:
                    raise ValueError(f"two adapters map to the PEFT key {key}")
                out[key] = np.ascontiguousarray(value.T.astype(EXPORT_DTYPES[dtype]))
    return out


def peft_adapter_config(
    cfg: LoraConfig, base_model_name_or_path: str | None, target_modules: list[str]
) -> dict[str, Any]:
    """The ``adapter_config.json`` fields that decide how PEFT rebuilds and scales LoRA."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": float(cfg.dropout),
        "target_modules": target_modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
    }


def export_peft_adapter(
    adapters: Mapping[str, Any],
    cfg: LoraConfig,
    base_model_name_or_path: str | None,
    out_dir: str | Path,
    dtype: str = "float32",
) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors``; returns ``out_dir``.

    ``target_modules`` lists the projections actually present in ``adapters``, so PEFT creates
    exactly the LoRA layers the file fills (a missing one would load as an untrained adapter).
    """
    validate(cfg)
    tensors = peft_state_dict(adapters, dtype)
    ranks = {v.shape[0] for k, v in tensors.items() if k.endswith("lora_A.weight")}
    if ranks != {cfg.rank}:
        raise ValueError(f"adapter ranks {sorted(ranks)} differ from LoraConfig.rank {cfg.rank}")
    present = {path[-1] for path in adapter_pairs(adapters)}
    targets = [m for m in GROUP if m in present]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = peft_adapter_config(cfg, base_model_name_or_path, targets)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out
