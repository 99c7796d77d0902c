"""jdjudge.judge and jdjudge.export against transformers / peft, on tiny models the test saves.

The references are independent: transformers' PyTorch Llama computes the logits, and the
label distribution is a plain softmax over the label tokens' logits at the last position.
"""

from __future__ import annotations

import json

import numpy as np
import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from jdjudge import export, judge, train
from jdjudge.data.tokenizer import build_tokenizer
from tests.conftest import PROJECT_ROOT

TINY = str(PROJECT_ROOT / "configs" / "tiny.py")
WORDS = "is the answer to this question right or wrong ? Answer : two plus two makes four five"
PROMPTS = [
    "is two plus two four ? Answer :",
    "two plus two makes five , right or wrong ? Answer :",
    "is the answer right ? Answer :",
]
LABELS = ["yes", "no", "maybe"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random tiny Llama with a word-level tokenizer, saved like a hub checkpoint."""
    path = tmp_path_factory.mktemp("hf") / "tiny-llama"
    tokenizer = build_tokenizer([WORDS, ", right"], extra_tokens=LABELS)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.2, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _reference(model, tokenizer, prompt: str, labels: list[str]) -> np.ndarray:
    """softmax over the first token of " <label>" after [BOS] + prompt, from torch logits."""
    ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].double()
    label_ids = [
        tokenizer(" " + label, add_special_tokens=False)["input_ids"][0] for label in labels
    ]
    return torch.softmax(logits[label_ids], dim=0).numpy()


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_judge_alike(tmp_path, run, exported) -> None:
    """``jdjudge.judge`` on a run's checkpoint and on its export gives the same distributions."""
    items = _write(tmp_path / "items.jsonl", [
        {"id": f"q{i}", "prompt": p, "labels": ["yes", "no"]} for i, p in enumerate(PROMPTS)
    ])  # fmt: skip
    from_run, from_export = tmp_path / "run.jsonl", tmp_path / "export.jsonl"
    assert judge.main([f"--model={run}", f"--input={items}", f"--output={from_run}"]) == 0
    assert judge.main([f"--model={exported}", f"--input={items}", f"--output={from_export}"]) == 0
    for x, y in zip(_read(from_run), _read(from_export), strict=True):
        np.testing.assert_allclose(x["distribution"], y["distribution"], atol=1e-5)


def test_judge_on_raw_records_equals_transformers(hf_dir, tmp_path):
    from transformers import AutoTokenizer

    items = _write(tmp_path / "items.jsonl", [
        {"id": f"q{i}", "prompt": p, "labels": LABELS[: 2 + i % 2]} for i, p in enumerate(PROMPTS)
    ])  # fmt: skip
    out = tmp_path / "out.jsonl"
    assert judge.main([f"--model={hf_dir}", f"--input={items}", f"--output={out}"]) == 0
    torch_model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    lines = _read(out)
    assert [line["id"] for line in lines] == ["q0", "q1", "q2"]
    for line, prompt in zip(lines, PROMPTS, strict=True):
        want = _reference(torch_model, tokenizer, prompt, line["labels"])
        np.testing.assert_allclose(line["distribution"], want, atol=1e-5)


def test_judge_names_the_bad_line(hf_dir, tmp_path, capsys):
    items = _write(tmp_path / "items.jsonl", [{"id": "a", "prompt": "x", "labels": ["yes", "no"]}])
    with items.open("a") as handle:
        handle.write('{"id": "b", "prompt": "y", "labels": []}\n')
    with pytest.raises(SystemExit) as exit_info:
        judge.main([f"--model={hf_dir}", f"--input={items}", f"--output={tmp_path / 'o'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"jdjudge.judge: error: {items}:2: field 'labels'")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def lora_run(hf_dir, tmp_path_factory):
    """A few LoRA steps on top of the tiny HF model, on a raw-prompt dataset."""
    root = tmp_path_factory.mktemp("lora")
    rows = [
        {"id": f"r{i}", "task": "raw", "fields": {"prompt": PROMPTS[i % 3]},
         "labels": ["yes", "no"], "counts": [i % 4, 3]}
        for i in range(60)
    ]  # fmt: skip
    data = _write(root / "data.jsonl", rows)
    workdir = root / "run"
    argv = [
        "jdjudge.train", f"--config={TINY}:jsonl", f"--config.data.path={data}",
        f"--config.workdir={workdir}", f"--config.model.init_from={hf_dir}",
        "--config.lora.rank=4", "--config.steps=6", "--config.eval_every=3",
        "--config.data.max_length=32", "--config.data.tokens_per_batch=256",
        "--config.optimizer.learning_rate=0.01", "--config.optimizer.warmup_steps=1",
    ]  # fmt: skip
    assert train.main(argv) == 0
    return workdir


def test_lora_export_merged_and_peft_give_the_same_logits(hf_dir, lora_run, tmp_path):
    merged_dir, adapter_dir = tmp_path / "merged", tmp_path / "adapter"
    argv = [f"--model={lora_run}", f"--output={merged_dir}", f"--peft_output={adapter_dir}",
            "--dtype=float32"]  # fmt: skip
    assert export.main(argv) == 0
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, attn_implementation="eager")
    base = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager")
    with_adapter = peft.PeftModel.from_pretrained(base, adapter_dir)
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        a = merged(ids).logits
        b = with_adapter(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(hf_dir)(ids).logits
    assert torch.max(torch.abs(a - b)) < 1e-4
    assert torch.max(torch.abs(a - plain)) > 1e-4  # the adapters did change the model

    assert_judge_alike(tmp_path, lora_run, merged_dir)


def test_lora_export_with_default_flags_writes_both_and_peft_reproduces_the_judge(
    hf_dir, lora_run, tmp_path
):
    """The README's command as it is: the PEFT adapter defaults to float32 (exact), the merged
    model to bfloat16; both directories appear, and transformers + peft give the judge's
    distributions."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    merged_dir, adapter_dir = tmp_path / "merged", tmp_path / "adapter"
    argv = [f"--model={lora_run}", f"--output={merged_dir}", f"--peft_output={adapter_dir}"]
    assert export.main(argv) == 0
    with safe_open(adapter_dir / "adapter_model.safetensors", "np") as tensors:
        assert {tensors.get_tensor(k).dtype for k in tensors.keys()} == {np.dtype("float32")}  # noqa: SIM118
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "bfloat16"

    items = _write(tmp_path / "items.jsonl", [
        {"id": f"q{i}", "prompt": p, "labels": ["yes", "no"]} for i, p in enumerate(PROMPTS)
    ])  # fmt: skip
    out = tmp_path / "run.jsonl"
    assert judge.main([f"--model={lora_run}", f"--input={items}", f"--output={out}"]) == 0
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    base = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager")
    with_adapter = peft.PeftModel.from_pretrained(base, adapter_dir)
    merged = AutoModelForCausalLM.from_pretrained(
        merged_dir, attn_implementation="eager", dtype=torch.float32
    )
    for line, prompt in zip(_read(out), PROMPTS, strict=True):
        want = _reference(with_adapter, tokenizer, prompt, ["yes", "no"])
        np.testing.assert_allclose(line["distribution"], want, atol=1e-4)
        rounded = _reference(merged, tokenizer, prompt, ["yes", "no"])  # bfloat16 weights
        np.testing.assert_allclose(line["distribution"], rounded, atol=2e-2)
