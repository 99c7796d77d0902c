"""Hub resolution: a hub id with the Hub disabled or unreachable fails at once, saying why;
a missing path never reaches the Hub."""

from __future__ import annotations

import time

import pytest

from jdjudge.models.hf_import import load_hf_model
from jdjudge.models.hub import HubUnavailable


def test_hub_id_offline_error_is_clear(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(HubUnavailable, match=r"the Hub is disabled \(HF_HUB_OFFLINE=1\)"):
        load_hf_model("meta-llama/Llama-3.2-1B")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_hf_model(tmp_path / "nope")


def test_an_unreachable_hub_fails_at_once_without_retries(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # refuses connections
    started = time.monotonic()
    with pytest.raises(HubUnavailable, match=r"the Hub \(http://127\.0\.0\.1:9\) is unreachable"):
        load_hf_model("org/model")
    assert time.monotonic() - started < 10
