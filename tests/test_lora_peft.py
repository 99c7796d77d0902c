"""LoRA against peft: our merged forward vs peft's unmerged per-token forward, and the PEFT
adapter export loaded by peft itself (independent references: torch + peft)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jdjudge.config.schema import LoraConfig
from jdjudge.models import lora
from jdjudge.models.peft_export import export_peft_adapter, peft_state_dict
from tests.test_decoder import build_torch as _build_torch
from tests.test_decoder import torch_to_params as _torch_to_params
from tests.test_lora import CFG, TINY, logits, random_adapters, stack_layers, tokens_batch


def build_torch(seed: int = 0):
    """The tiny torch Llama of the decoder parity tests, for TINY's shapes."""
    return _build_torch(TINY, "llama", seed)


def torch_to_params(model) -> dict:
    return _torch_to_params(model.state_dict(), TINY)


def peft_config(cfg: LoraConfig):
    peft = pytest.importorskip("peft")
    return peft.LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=0.0,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.from_numpy(tokens).long()).logits.numpy()


def test_merged_forward_matches_peft_unmerged_forward():
    peft = pytest.importorskip("peft")
    import torch

    model = build_torch()
    params = torch_to_params(model)
    adapters = random_adapters(params)
    tokens = tokens_batch()
    base_ref = torch_logits(model, tokens)
    np.testing.assert_allclose(logits(params, tokens), base_ref, atol=1e-4, rtol=0)

    peft_model = peft.get_peft_model(model, peft_config(CFG)).eval()
    flat = flatten_dict(adapters)
    pattern = re.compile(r".*layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.default\.weight")
    seen = 0
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if m := pattern.fullmatch(name):
                i, group, proj, ab = m.groups()
                ours = flat[(f"layers_{i}", group, proj, f"lora_{ab.lower()}")]
                p.copy_(torch.from_numpy(np.asarray(ours).T.copy()))
                seen += 1
    assert seen == len(flat)
    ref = torch_logits(peft_model, tokens)
    ours = logits(lora.merge(params, adapters, CFG), tokens)
    diff = float(np.abs(ours - ref).max())
    print(f"merged vs PEFT unmerged: max abs diff {diff:.2e}")
    assert np.abs(ref - base_ref).max() > 0.5  # the adapters matter
    assert diff <= 1e-4


def test_peft_export_round_trip(tmp_path):
    peft = pytest.importorskip("peft")
    from safetensors.numpy import load_file

    params = torch_to_params(build_torch())
    adapters = random_adapters(params, seed=3)
    out = export_peft_adapter(adapters, CFG, "tiny-llama", tmp_path / "ours")

    # Same keys and shapes as peft's own save_pretrained.
    real = peft.get_peft_model(build_torch(), peft_config(CFG))
    real.save_pretrained(tmp_path / "peft")
    want = {k: v.shape for k, v in load_file(tmp_path / "peft/adapter_model.safetensors").items()}
    got = {k: v.shape for k, v in load_file(out / "adapter_model.safetensors").items()}
    assert got == want
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    assert config["base_model_name_or_path"] == "tiny-llama"

    loaded = peft.PeftModel.from_pretrained(build_torch(), out).eval()
    tokens = tokens_batch(1)
    ref = torch_logits(loaded, tokens)
    ours = logits(lora.merge(params, adapters, CFG), tokens)
    diff = float(np.abs(ours - ref).max())
    print(f"PEFT export round trip: max abs diff {diff:.2e}")
    assert np.abs(ref - logits(params, tokens)).max() > 0.5
    assert diff <= 1e-4

    stacked = peft_state_dict(stack_layers(adapters))
    per_layer = peft_state_dict(adapters)
    assert stacked.keys() == per_layer.keys()
    assert all(np.array_equal(stacked[k], per_layer[k]) for k in per_layer)
