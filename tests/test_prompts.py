"""Prompts end right before the answer; verbalizers are single tokens under Llama 3."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from jdjudge.data import synthetic
from jdjudge.data.loaders import load_records
from jdjudge.data.prompts import (
    VerbalizerError,
    check_answer_boundary,
    check_verbalizers,
    fit_to_max_length,
    prompt_lengths,
    render_prompt,
    verbalizers,
)
from jdjudge.data.records import JudgmentRecord
from jdjudge.data.schema import DataError

# A Llama 3 style chat template (the shared tokenizer.json ships none).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"
NLI = ("entailment", "neutral", "contradiction")
DATASETS = {
    "chaosnli_snli": "chaosnli",
    "chaosnli_alphanli": "chaosnli",
    "summeval": "summeval",
    "mtbench": "mtbench_human",
    "dices_990": "dices",
    "newsroom": "newsroom",
}


@pytest.fixture(scope="module")
def llama3(shared_data) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(shared_data / "tokenizers" / "llama3" / "tokenizer.json"),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def samples(shared_data) -> list[JudgmentRecord]:
    """A few records of every task: each shipped dataset, both MT-Bench turns, synthetic, raw."""
    out = []
    for name, folder in DATASETS.items():
        records = load_records(name, shared_data / folder)
        out += records[:6] + [r for r in records if r.meta.get("turn") == 2][:3]
    out += synthetic.generate_records(synthetic.SyntheticTaskConfig(num_items=3))
    out.append(JudgmentRecord("raw-1", "raw", {"prompt": "Q: 2+2=4?\nA:"}, ("yes", "no"), (3, 1)))
    return out


def test_entailment_is_two_llama3_tokens_and_is_rejected(llama3):
    with pytest.raises(VerbalizerError) as info:
        check_verbalizers(llama3, [[" entailment"], [" neutral"], [" contradiction"]], NLI)
    assert str(info.value) == (
        "verbalizer ' entailment' of label 'entailment' is 2 tokens ('Ġentail', 'ment'), not "
        "one; use single-token verbalizers (see prompts.verbalizers) or allow_multi_token=True "
        "to score its first token"
    )


def test_first_token_rule_when_multi_token_is_allowed(llama3):
    words = [[" entailment"], [" neutral"], [" contradiction"]]
    ids = check_verbalizers(llama3, words, NLI, allow_multi_token=True)
    assert ids == [[87092], [21277], [50859]]
    with pytest.raises(VerbalizerError, match=r"share the answer token 87092 \('Ġentail'\)"):
        check_verbalizers(llama3, [[" entailment"], [" entail"]], ("a", "b"), True)


def test_collision_is_an_error(llama3):
    with pytest.raises(VerbalizerError) as info:
        check_verbalizers(llama3, [[" yes"], [" no", " yes"]], ("a", "b"))
    assert str(info.value) == (
        "verbalizers ' yes' (label 'a') and ' yes' (label 'b') share the answer token 10035 ('Ġyes')"
    )


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_every_task_has_single_token_verbalizers_at_the_answer_boundary(llama3, samples, chat):
    tasks = set()
    for record in samples:
        prompt = render_prompt(record, llama3, chat_template=chat)
        words = verbalizers(record.task, record.labels, chat_template=chat)
        ids = check_verbalizers(llama3, words, record.labels)
        assert all(len(row) == 1 for row in ids)
        check_answer_boundary(llama3, prompt, words)
        if chat and record.task != "raw":
            assert prompt.startswith("<|begin_of_text|>") and prompt.endswith(ASSISTANT_HEADER)
        tasks.add(record.task)
    assert tasks == {"nli", "abductive_nli", "likert", "pairwise", "safety", "synthetic", "raw"}


def test_plain_prompts_end_with_the_answer_cue_and_name_the_answer_words(samples):
    cues = {
        "nli": "\n\nAnswer:",
        "abductive_nli": "\n\nAnswer: ",
        "pairwise": "\n\nVerdict:",
        "safety": "\n\nAnswer:",
        "synthetic": "\nVerdict:",
    }
    for record in samples:
        prompt = render_prompt(record)
        if record.task == "likert":
            assert prompt.endswith(f"{record.fields['dimension'].capitalize()} score (1-5): ")
            assert "from 1 to 5" in prompt
        elif record.task in cues:
            assert prompt.endswith(cues[record.task])
        if record.task in ("nli", "safety", "pairwise", "abductive_nli"):
            for (word,) in verbalizers(record.task, record.labels):
                assert f'"{word.strip()}"' in prompt, (record.task, word)


def test_label_meanings_of_the_shipped_verbalizers():
    assert verbalizers("nli", NLI) == [[" yes"], [" maybe"], [" no"]]
    assert verbalizers("safety", ("unsafe", "safe", "unsure")) == [[" yes"], [" no"], [" maybe"]]
    assert verbalizers("pairwise", ("A", "B", "tie"), chat_template=True) == [["A"], ["B"], ["tie"]]
    assert verbalizers("likert", tuple("12345")) == [[d] for d in "12345"]
    assert verbalizers("synthetic", synthetic.LABELS) == [[v] for v in synthetic.VERBALIZERS]


def test_raw_is_verbatim_and_synthetic_matches_its_template(llama3, samples):
    raw = samples[-1]
    assert render_prompt(raw) == render_prompt(raw, llama3, chat_template=True) == "Q: 2+2=4?\nA:"
    syn = next(r for r in samples if r.task == "synthetic")
    assert render_prompt(syn) == synthetic.render_prompt(syn.prompt_text)


def test_prompt_errors(llama3):
    odd = JudgmentRecord(
        "o",
        "likert",
        {"summary": "s", "source": "a", "dimension": "wit"},
        tuple("12345"),
        (1, 0, 0, 0, 0),
    )
    with pytest.raises(ValueError, match="dimension 'wit' has no built-in criteria"):
        render_prompt(odd)
    given = JudgmentRecord(
        "g", "likert", {**odd.fields, "criteria": "Is it witty?"}, tuple("12345"), (1, 0, 0, 0, 0)
    )
    assert "Criterion: Wit. Is it witty?\n" in render_prompt(given)
    nli = JudgmentRecord("n", "nli", {"premise": "p", "hypothesis": "h"}, NLI, (1, 0, 0))
    with pytest.raises(ValueError, match="needs a tokenizer that has a chat template"):
        render_prompt(nli, chat_template=True)
    with pytest.raises(VerbalizerError, match="do not split at the answer boundary"):
        check_answer_boundary(llama3, "Answer: ", [["yes"]])


def long_records() -> list[JudgmentRecord]:
    article = " ".join(f"Sentence {i} of a long article about the harbour." for i in range(60))
    likert = JudgmentRecord(
        "long",
        "likert",
        {"summary": "A short summary.", "source": article, "dimension": "relevance"},
        tuple("12345"),
        (0, 1, 1, 1, 0),
    )
    short = JudgmentRecord("short", "nli", {"premise": "p", "hypothesis": "h"}, NLI, (1, 0, 0))
    return [likert, short]


def test_over_long_prompt_is_an_error_naming_id_and_length(llama3):
    records = long_records()
    length = prompt_lengths(records, llama3)[0]
    with pytest.raises(DataError) as info:
        fit_to_max_length(records, llama3, 300)
    assert str(info.value) == (
        f"record 'long': prompt is {length} tokens, over max_length=300; "
        "pass truncate=True to cut its 'source' field"
    )


def test_truncation_cuts_the_long_field_and_prints_the_count(llama3, capsys):
    records = long_records()
    fitted = fit_to_max_length(records, llama3, 300, truncate=True)
    assert capsys.readouterr().out == "fit_to_max_length: truncated 1 of 2 prompts to 300 tokens\n"
    assert fitted[1] is records[1]
    cut = fitted[0]
    assert prompt_lengths([cut], llama3)[0] <= 300
    assert cut.fields["source"].endswith(" [...]") and cut.meta["truncated_tokens"] > 0
    assert cut.fields["summary"] == "A short summary." and cut.counts == records[0].counts
    pair = JudgmentRecord(
        "pw",
        "pairwise",
        {"question": "q", "answer_a": "a " * 400, "answer_b": "b"},
        ("A", "B", "tie"),
        (1, 0, 0),
    )
    with pytest.raises(DataError, match=r"record 'long': prompt cannot fit max_length=60 even"):
        fit_to_max_length(records, llama3, 60, truncate=True)
    with pytest.raises(DataError, match="task 'pairwise' has no field that may be cut"):
        fit_to_max_length([pair], llama3, 300, truncate=True)


def test_truncation_on_real_summeval_items(llama3, shared_data):
    records = load_records("summeval", shared_data / "summeval")[::400]
    fitted = fit_to_max_length(records, llama3, 512, truncate=True)
    assert max(prompt_lengths(fitted, llama3)) <= 512
    assert sum("truncated_tokens" in r.meta for r in fitted) == sum(
        n > 512 for n in prompt_lengths(records, llama3)
    )
